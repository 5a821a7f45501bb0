"""The words the demo's customer e-mails are filled in with: customers' names, the studio's makers and catalogue,
days, waits, discount codes and addresses, and the lines that frame each e-mail. ``data`` draws from them."""

from __future__ import annotations

FEMALE_NAMES = tuple(
    """
    Aaliyah Abigail Ada Adaeze Adriana Aisha Alba Alejandra Alice Alina Amara Amelia Amina Ana Anaya Andrea Anika
    Anna Aria Ayesha Ayumi Beatriz Bella Bianca Brooke Camila Carmen Caroline Catalina Chiara Chioma Chloe Clara
    Daniela Daphne Delia Diana Eliza Elena Elif Ella Eloise Emilia Emma Erin Esme Esther Eva Farah Fatima Fiona
    Freya Gabriela Grace Greta Hana Hannah Harper Hazel Helena Imani Ingrid Irene Isabel Isla Ivy Jade Jasmine
    Julia Juliet Kavya Keiko Laila Lara Layla Leah Leila Lena Lerato Lila Lily Lina Lucia Lucy Luisa Lydia Mabel
    Madeline Marisol Maya Mei Mia Mila Mina Miriam Nadia Naomi Ngozi Nia Nina Noor Nora Olga Olivia Paloma
    Penelope Priya Rachel Rania Renata Rosa Rose Ruby Sadie Sakura Sara Selin Sienna Sofia Sophie Stella Tara
    Thandiwe Thea Valentina Vera Violet Wanjiru Ximena Yara Yasmin Yuna Zainab Zara Zoe
    """.split()
)
MALE_NAMES = tuple(
    """
    Aarav Aaron Adam Adrian Ahmed Alejandro Alexander Ali Amir Andre Angelo Angus Anton Arjun Arnav Arthur Ben
    Benjamin Bruno Caleb Callum Carlos Cheng Chidi Christian Ciaran Cyrus Daniel Dario David Declan Dev Diego Dmitri
    Duc Eduardo Eitan Elias Emeka Emil Enzo Ethan Farid Felix Finn Florian Gabriel Gareth George Hamza Hans Harry
    Haruto Hassan Henry Hiroshi Hugo Ibrahim Idris Isaac Ishaan Ivan Jack Jacob Jakob James Javier Joao Jonas Jorge
    Joseph Julian Jun Kabir Kai Karim Kenji Kofi Kwame Lars Leo Liam Lorenzo Luca Lucas Luis Malik Marco Mateo
    Matteo Max Mehmet Miguel Milan Minh Mohammed Nathan Nikhil Nils Noah Oliver Omar Oscar Oskar Owen Pablo Patrick
    Pedro Pieter Rafael Rahul Ravi Reza Rhys Rohan Ryan Samuel Santiago Seamus Sebastian Simon Sipho Stefan Sven
    Takeshi Tariq Theo Thomas Tiago Tobias Tunde Umar Victor Vikram Wei William Xavier Yosef Yusuf Zain
    """.split()
)
NEUTRAL_NAMES = tuple(
    """
    Alex Ari Ashley Avery Bailey Blake Cameron Casey Charlie Dakota Drew Eden Emerson Finley Frankie Harley Hayden
    Jamie Jesse Jordan Jules Kendall Lane Logan Marley Morgan Noa Parker Peyton Quinn Reese Remy Riley River Robin
    Rowan Sam Sasha Skyler
    """.split()
)
LAST_NAMES = tuple(
    """
    Abara Adams Adeyemi Andersson Baker Bell Bennett Berg Bernard Boateng Brooks Brown Byrne Campbell Carter
    Castillo Chen Choi Clarke Cohen Costa Demir Dlamini Dubois Evans Eze Farouk Fernandes Flores Foster Fraser
    Garcia Georgiou Grant Green Gupta Haddad Hall Hayes Herrera Holm Horvath Huang Hughes Hussain Iyer Jensen
    Johnson Kamau Kaya Kelly Khan Kim King Kowalski Kumar Larsen Lee Levi Li Lindqvist Liu Lopez MacLeod Mansour
    Martinez Mensah Mitchell Mizrahi Mokoena Morales Moreau Muller Murphy Murray Nagy Nasser Ndlovu Nelson Nguyen
    Nielsen Novak Okafor Ortiz Otieno Ozturk Papadopoulos Park Patel Pereira Petrov Phillips Popescu Price Ramirez
    Reddy Reed Rivera Roberts Romero Rossi Santos Sato Scott Shah Sharma Silva Singh Smith Sorensen Stewart Suzuki
    Szabo Takahashi Tanaka Taylor Thomas Torres Turner Virtanen Walsh Wang Ward Watanabe Wilson Wood Wright Yilmaz
    Young Zhang
    """.split()
)
# The formal style addresses customers as "Ms./Mr. <last name>"; names without a clear title get the full name.
TITLES = {**dict.fromkeys(FEMALE_NAMES, "Ms."), **dict.fromkeys(MALE_NAMES, "Mr."), **dict.fromkeys(NEUTRAL_NAMES)}
FIRST_NAMES = FEMALE_NAMES + MALE_NAMES + NEUTRAL_NAMES

MAKERS = ("Maren", "Odile", "Joss", "Tamsin")
GLAZES = ("sage", "oatmeal", "midnight blue", "speckled white", "terracotta", "celadon", "charcoal", "honey", "blush")
PIECES = (
    "mug",
    "tea bowl",
    "ramen bowl",
    "pasta bowl",
    "salad bowl",
    "berry bowl",
    "serving platter",
    "dinner plate set",
    "side plate",
    "bud vase",
    "stoneware vase",
    "planter",
    "teapot",
    "pitcher",
    "butter dish",
    "olive dish",
    "espresso cup set",
    "tumbler",
    "oil bottle",
    "spoon rest",
    "candle holder",
    "soap dish",
    "ring dish",
    "fruit bowl",
)
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
WAITS = ("two weeks", "three weeks", "ten days", "almost a month")
RESTOCKS = ("in early March", "in about two weeks", "at the end of the month", "next Friday", "in mid-April")
CODES = ("SPRING10", "WELCOME15", "KILN20", "JUNIPER10", "GLAZE15", "HELLO10", "FIRSTPOT", "MUDDY5")
STREETS = (
    "Alder Lane",
    "Mill Road",
    "Harbor Street",
    "Kiln Court",
    "Orchard Way",
    "Station Road",
    "Willow Drive",
    "Church Lane",
    "Park Avenue",
    "Bramble Row",
    "Quarry Hill",
    "Elm Grove",
    "Rose Terrace",
    "Meadow View",
)
TOWNS = (
    "Portland",
    "Asheville",
    "Boulder",
    "Madison",
    "Burlington",
    "Santa Fe",
    "Austin",
    "Savannah",
    "Ithaca",
    "Eugene",
    "Duluth",
    "Taos",
    "Missoula",
    "Providence",
    "Bend",
)

# How customers frame an e-mail: the request to the assistant, and the e-mail's own greeting and closing.
INSTRUCTIONS = (
    "Draft a reply to this customer e-mail.",
    "Please draft a reply to the e-mail below.",
    "Write a reply to this customer for me.",
)
EMAIL_OPENERS = ("", "Hi,\n\n", "Hello,\n\n", "Hi there,\n\n", "Hello Juniper & Co.,\n\n", "Hi Juniper team,\n\n")
EMAIL_CLOSERS = (
    "",
    "\n\nThanks,\n{first}",
    "\n\nBest,\n{first} {last}",
    "\n\nThank you!\n{first}",
    "\n\nCheers,\n{first}",
    "\n\n{first} {last}",
)
