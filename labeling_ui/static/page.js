// The labeling page's behaviour in the browser, run by the page header's js_on_load (labeling_ui/layout.py), once
// per page: keyboard shortcuts and the "?" list of them, the clock of the current item, saving drafts, and the
// lease on the item (renewed while the item is on screen, released when it leaves the screen or the page closes).
// A rank or a flag is set by clicking its input, so Gradio sees exactly what a mouse click would give it.
if (!window.__labelingKeys) {
  window.__labelingKeys = true;
  const title = document.getElementById('title');
  // Lease renewal every quarter of the lease (30 s of 120 s): one lost request still leaves the item held.
  const BEAT_MS = 1000 * Number((title && title.dataset.beat) || 30);
  const DRAFT_DELAY_MS = 800; // one draft per pause in the labeler's input, not one per key
  const FLAG_KEYS = 'upwo'; // unsafe, private data, factually wrong, off-topic: the order of the checkboxes
  const $ = (selector) => document.querySelector(selector);
  window.__labelingRoot = () => ((window.gradio_config && window.gradio_config.root) || location.origin).replace(/\/$/, '');

  // --- the app's API routes (/heartbeat, /release), called with the page's login cookie ---
  const call = async (name, data, keepalive = false) => {
    const url = `${window.__labelingRoot()}/gradio_api/call/${name}`;
    const init = { method: 'POST', keepalive, headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ data }) };
    const posted = await fetch(url, init);
    if (!posted.ok || keepalive) return null;
    const { event_id: eventId } = await posted.json();
    const text = await (await fetch(`${url}/${eventId}`)).text();
    let event = null;
    for (const line of text.split('\n')) {
      if (line.startsWith('event:')) event = line.slice(6).trim();
      else if (line.startsWith('data:') && event === 'complete') return JSON.parse(line.slice(5))[0];
    }
    return null;
  };
  const itemKey = () => { const box = $('#item-key textarea, #item-key input'); return box ? box.value : 'loading'; };

  // --- the lease and the clock: checked every second ---
  // `held`: the item whose lease this page keeps. The server gives a lease with every item it sends, so an item that
  // arrives counts as held (and is released at once if the Rank tab is no longer on screen by then).
  let held = '', lastLease = '', lastBeat = 0, keyShown = null, since = Date.now();
  const staleBanner = (show) => {
    let banner = document.getElementById('stale-banner');
    if (!banner && show) {
      banner = document.createElement('div');
      banner.id = 'stale-banner';
      banner.textContent = 'This page is out of date: its item was ranked, skipped or handed on elsewhere. Reload the page.';
      document.body.appendChild(banner);
    }
    if (banner) banner.hidden = !show;
  };
  // A request refused for want of a session (the password was reset, the account disabled, the session's day is
  // over): one banner that says so and leads back to the login, instead of Gradio's "Error" on every field.
  const sessionEnded = () => {
    if (document.getElementById('session-banner')) return;
    const banner = document.createElement('div');
    banner.id = 'session-banner';
    banner.setAttribute('role', 'alert');
    banner.append('Your session has ended (your password was changed, your account was disabled, or the day is over), ' +
      'so this was not saved. ');
    const link = document.createElement('a');
    link.href = `${window.__labelingRoot()}/logout`;
    link.textContent = 'Log in again';
    banner.append(link, ': the draft saved before this comes back with the item.');
    document.body.appendChild(banner);
  };
  const fetchPage = window.fetch.bind(window);
  window.fetch = async (resource, options) => {
    const response = await fetchPage(resource, options);
    const url = String(resource instanceof Request ? resource.url : resource);
    if (response.status === 401 && url.includes('/gradio_api/')) sessionEnded();
    return response;
  };
  // Renewals and releases go one after the other: a renewal still on its way when the page is left would otherwise
  // reach the server after the release and hold the item again for a whole lease.
  let calls = Promise.resolve();
  const inTurn = (task) => { calls = calls.then(task).catch(() => {}); };
  const beat = (key) => {
    lastBeat = Date.now();
    inTurn(() => call('heartbeat', [key]).then((answer) => {
      if (answer && answer.ok === false && itemKey() === key) staleBanner(true);
    }));
  };
  const release = (key) => inTurn(() => call('release', [key]));
  let asked = false;
  setInterval(() => {
    const key = itemKey();
    if (key !== keyShown) {
      keyShown = key; since = Date.now(); asked = false; staleBanner(false);
      if (selectedFor !== key) select(0); // shown at once; a key already pressed for this item keeps its choice
    }
    const prompt = $('#prompt');
    // On screen: the Rank tab is shown (the prompt has a layout box) in a visible browser tab.
    const rankShown = document.visibilityState === 'visible' && prompt && prompt.offsetParent !== null;
    if (key === '' && rankShown && !asked) { asked = true; click('fetch-btn'); } // an admin opened the Rank tab
    const item = key && !['none', 'loading'].includes(key) && !key.startsWith('edit:'); // edits hold nothing
    const lease = item ? key : '';
    if (lease !== lastLease) { lastLease = lease; held = lease; lastBeat = Date.now(); } // a new item, just leased
    if (!rankShown && held) { release(held); held = ''; } // left the screen
    else if (rankShown && lease && (held !== lease || Date.now() - lastBeat >= BEAT_MS)) { held = lease; beat(lease); }
    const clock = document.getElementById('clock');
    if (clock) {
      const s = Math.floor((Date.now() - since) / 1000);
      const shown = item || key.startsWith('edit:');
      clock.textContent = shown ? `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')} on this item` : '';
    }
  }, 1000);
  // A new item starts at the top of the page, its prompt in view, wherever the last one was scrolled to.
  let keyScrolled = itemKey();
  setInterval(() => {
    const key = itemKey();
    if (key !== keyScrolled) { keyScrolled = key; if (key && key !== 'loading') window.scrollTo({ top: 0 }); }
  }, 100);
  // The page is going away (a reload, Log out, the tab closed): what was typed since the last draft is sent as one,
  // and the item released. No time to wait for a renewal in flight; a keepalive request outlives the page.
  // Log out sends it before it leaves: by the time the page goes, the session is gone.
  window.__labelingLastDraft = () => {
    const key = itemKey();
    if (unsaved && key && !['none', 'loading'].includes(key) && !key.startsWith('edit:')) {
      unsaved = false;
      call('draft', [key, ...shownDraft()], true).catch(() => {});
    }
  };
  window.addEventListener('pagehide', () => {
    window.__labelingLastDraft();
    if (held) call('release', [held], true).catch(() => {});
  });

  // --- drafts: the hidden "Save draft" button sends the form after a pause in the labeler's input ---
  // `unsaved`: input since the last draft was sent, for the page's last draft (above).
  let draftTimer = null, unsaved = false;
  const scheduleDraft = (e) => {
    if (!(e.target.closest && e.target.closest('.candidate, #none-ok, #comment'))) return;
    unsaved = true;
    clearTimeout(draftTimer);
    draftTimer = setTimeout(() => { unsaved = false; click('draft-btn'); }, DRAFT_DELAY_MS);
  };
  window.__labelingDraftSoon = () => {
    unsaved = true;
    clearTimeout(draftTimer);
    draftTimer = setTimeout(() => { unsaved = false; click('draft-btn'); }, DRAFT_DELAY_MS);
  };
  // The form as shown: each response's rank and the indices of its ticked flags, in the order shown (A, B, ...).
  const shownDraft = () => {
    const shown = [...document.querySelectorAll('.candidate')].filter((c) => c.offsetParent !== null);
    const ranks = shown.map((c) => { const r = c.querySelector('input[type=radio]:checked'); return r ? Number(r.value) : null; });
    const flags = shown.map((c) => [...c.querySelectorAll('input[type=checkbox]')].flatMap((b, j) => (b.checked ? [j] : [])));
    const none = $('#none-ok input'), comment = $('#comment textarea');
    return [JSON.stringify(ranks), JSON.stringify(flags), Boolean(none && none.checked), comment ? comment.value : ''];
  };
  document.addEventListener('input', scheduleDraft, true);
  document.addEventListener('change', scheduleDraft, true);

  // --- selection, expansion, the "?" list ---
  // A new item starts with A selected, unless the labeler already chose a response of it (a click, a key):
  // `selectedFor` is the item that choice belongs to. Checked in the key handler itself, so a key pressed the
  // moment an item arrives never lands on the previous item's selection.
  let selected = 0, selectedFor = null;
  const cards = () => [...document.querySelectorAll('.candidate')].filter((c) => c.offsetParent !== null);
  function select(i) {
    const all = cards();
    if (!all.length) return;
    selected = Math.max(0, Math.min(i, all.length - 1));
    all.forEach((c, j) => c.classList.toggle('selected', j === selected));
  }
  window.__labelingExpand = (i) => {
    const card = document.getElementById(`cand-${i}`);
    if (!card) return;
    const open = card.classList.toggle('expanded');
    const button = card.querySelector('.expand-btn');
    if (button) button.textContent = open ? 'Collapse' : 'Expand';
  };
  // The class goes on the box itself: Gradio scopes the page's CSS to its container, so a class on <body> never
  // matches a scoped rule.
  window.__labelingHelp = (open) => {
    const box = document.getElementById('help-box');
    if (box) box.classList.toggle('open', open);
  };
  const click = (id) => { const b = document.getElementById(id); if (b && !b.disabled) b.click(); };
  document.addEventListener('mousedown', (e) => {
    const card = e.target.closest && e.target.closest('.candidate');
    if (card) { selectedFor = itemKey(); select(cards().indexOf(card)); }
    else if (!(e.target.closest && e.target.closest('#help, #help-btn'))) window.__labelingHelp(false);
  });

  document.addEventListener('keydown', (e) => {
    const t = e.target;
    const typing = t && (t.tagName === 'TEXTAREA' || t.isContentEditable ||
      (t.tagName === 'INPUT' && !['radio', 'checkbox'].includes(t.type)));
    if (e.key === 'Escape') { window.__labelingHelp(false); if (typing) t.blur(); return; }
    if ((e.ctrlKey || e.metaKey) && e.key === 'Enter') {
      e.preventDefault(); clearTimeout(draftTimer); unsaved = false; click('submit-btn'); return;
    }
    if (e.altKey && e.code === 'KeyS') {
      e.preventDefault();
      const reason = $('#skip-reason textarea, #skip-reason input');
      if (reason && !reason.value.trim()) reason.focus();
      clearTimeout(draftTimer); unsaved = false; click('skip-btn'); return;
    }
    if (e.altKey && e.code === 'KeyZ') { e.preventDefault(); click('undo-btn'); return; }
    if (typing || e.ctrlKey || e.metaKey || e.altKey || e.key.length !== 1) return;
    if (e.key === '?') { e.preventDefault(); window.__labelingHelp(); return; }
    if (!$('#prompt') || $('#prompt').offsetParent === null) return; // the keys below act on the Rank tab only
    if (itemKey() !== selectedFor) { selectedFor = itemKey(); select(0); }
    const key = e.key.toLowerCase(), all = cards(), card = all[selected];
    const letter = 'abcdefgh'.indexOf(key);
    if (letter >= 0 && letter < all.length) { e.preventDefault(); select(letter); return; }
    if (/^[1-9]$/.test(key) && card) {
      const radio = card.querySelector(`input[type=radio][value="${key}"]`);
      if (radio) { e.preventDefault(); radio.click(); select(selected + 1); }
      return;
    }
    const flag = FLAG_KEYS.indexOf(key);
    if (flag >= 0 && card) {
      const box = card.querySelectorAll('input[type=checkbox]')[flag];
      if (box) { e.preventDefault(); box.click(); }
      return;
    }
    if (key === '0' && card) { const clear = card.querySelector('.clear-btn'); if (clear) { e.preventDefault(); clear.click(); } return; }
    if (key === 'x' && card) { e.preventDefault(); window.__labelingExpand(Number(card.id.split('-')[1])); return; }
    if (key === 'n') { const box = $('#none-ok input'); if (box) { e.preventDefault(); box.click(); } return; }
    if (key === 'm') { const box = $('#comment textarea'); if (box) { e.preventDefault(); box.focus(); } }
  });
}
