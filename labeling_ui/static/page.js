// The labeling page's keyboard shortcuts, run by the page header's js_on_load (labeling_ui/page.py).
// Registered once per page. Letters and digits act only outside text fields; Ctrl+Enter and Alt+S work everywhere.
// A rank is set by clicking the response's radio button, so Gradio sees exactly what a mouse click would give it.
if (!window.__labelingKeys) {
  window.__labelingKeys = true;
  let selected = 0, lastPrompt = null;
  const cards = () => [...document.querySelectorAll('.candidate')].filter((c) => c.offsetParent !== null);
  const select = (i) => {
    const all = cards();
    if (!all.length) return;
    selected = Math.max(0, Math.min(i, all.length - 1));
    all.forEach((c, j) => c.classList.toggle('selected', j === selected));
  };
  const click = (id) => { const b = document.getElementById(id); if (b && !b.disabled) b.click(); };
  document.addEventListener('mousedown', (e) => {
    const card = e.target.closest && e.target.closest('.candidate');
    if (card) select(cards().indexOf(card));
  });
  document.addEventListener('keydown', (e) => {
    const prompt = document.querySelector('#prompt textarea');
    if (prompt && prompt.value !== lastPrompt) { lastPrompt = prompt.value; select(0); }
    if ((e.ctrlKey || e.metaKey) && e.key === 'Enter') { e.preventDefault(); click('submit-btn'); return; }
    if (e.altKey && e.code === 'KeyS') { e.preventDefault(); click('skip-btn'); return; }
    const t = e.target;
    const typing = t && (t.tagName === 'TEXTAREA' || t.isContentEditable ||
      (t.tagName === 'INPUT' && !['radio', 'checkbox'].includes(t.type)));
    if (typing || e.ctrlKey || e.metaKey || e.altKey || e.key.length !== 1) return;
    const all = cards();
    const letter = 'abcdefgh'.indexOf(e.key.toLowerCase());
    if (letter >= 0 && letter < all.length) { e.preventDefault(); select(letter); return; }
    if (/^[1-9]$/.test(e.key) && all[selected]) {
      const radio = all[selected].querySelector(`input[type=radio][value="${e.key}"]`);
      if (radio) { e.preventDefault(); radio.click(); select(selected + 1); }
    }
  });
}
