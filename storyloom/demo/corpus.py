"""The small English corpus the demo tokenizer is trained on.

Varied prose, dialogue, numbers, SDXL-style tag lists and some non-ASCII text (accents, CJK, Cyrillic,
emoji) so that byte-level merges and multi-byte streaming are both exercised.
"""

from __future__ import annotations

CORPUS = """\
Once upon a time, in a village at the edge of a quiet forest, there lived a girl named Mira who collected
lost things. She found buttons in the mud, keys without doors, and letters that had never been sent. Every
evening she laid them out on the kitchen table and tried to guess whom they had belonged to.

One autumn night a lantern appeared on her doorstep. It was made of brass and green glass, and inside it a
small flame burned without any oil. "Who left you here?" Mira asked. The flame flickered twice, as if it
were laughing, and pointed toward the hills.

The old miller said the hills were dangerous after dark. The baker said they were only dangerous for people
who did not bring bread. Mira brought bread, a warm scarf, and the lantern, and she set out before the moon
rose over the river.

The path wound between birch trees whose bark shone like paper. Owls called from the branches. Somewhere far
away a bell rang three times, then stopped. Mira counted her steps: one hundred, two hundred, three hundred
and forty-two. At the top of the hill stood a door with no house behind it.

"That's where the key goes," she whispered. She took the smallest key from her pocket, the one with a
crooked tooth, and turned it in the lock. The door opened onto a sky full of slow, silver whales.

Chapter Two: The Clockmaker's Daughter

In the city of Harrowgate, where the streets were paved with blue stone and every roof had a weather vane,
the clockmaker's daughter refused to let time run out. Her name was Elodie, and she was twelve years old.
Her father had built 1,024 clocks, and each of them ran a little differently: some fast, some slow, one
backwards. "A clock is a promise," he told her. "It promises that tomorrow will come."

When the great tower clock stopped at 11:59 on the eve of the festival, the mayor panicked. The merchants
closed their shutters. The children stopped singing. Only Elodie climbed the 365 steps of the tower, her
toolbox rattling, to see what had gone wrong. Inside the gears she found a sleeping fox curled around the
main spring, warm and stubborn and entirely uninterested in the festival.

Chapter Three: A Café in Winter

Snow fell on the little café at the corner of the square. Inside, the windows fogged and the radiator
clicked. Jules, who was naïve enough to believe every story a stranger told him, poured coffee for a woman
in a red coat. She said she had come from Zürich by way of São Paulo, and before that from a lighthouse on
a rock in the northern sea. She paid with a coin that nobody in town had ever seen: on one side a crescent
moon, on the other the word 日本 stamped in neat, square letters.

"Where is that?" Jules asked. "Far to the east," she said, "where the sun comes up first. In Tokyo, 東京,
people greet each other with こんにちは, and in Moscow they say Привет. Everyone, everywhere, is waiting for
someone." She smiled and left a tip of three paper cranes. The façade of the café looked the same the next
morning, but the coffee tasted of cinnamon and smoke for a week.

Chapter Four: The Dragon Who Was Afraid of the Dark 🐉

Even dragons have secrets. Brannoch, the largest dragon in the mountains, slept with a candle lit. His
scales were the color of old copper, his wings could cover a barn, and his breath could melt iron, but when
the candle went out he trembled. One night a firefly named Pip 🌟 drifted into his cave. "Why are you
shaking?" Pip asked. "Because I cannot see," said the dragon. "Then I will glow for you," said Pip, "and you
will keep the wind away from me." They became the best of friends ✨, and the villagers below wondered why
the mountain shone softly every night 🌙.

Chapter Five: Letters from the Sea

Dear Tomas, the sea is grey today and the gulls are arguing again. I have found a bottle with a map inside,
but the map shows a place that is not on any chart. The captain says we will sail there tomorrow if the
weather holds. I miss the orchard, the smell of apples, and your terrible jokes. Write soon. — Anna

Dear Anna, the orchard misses you too. The apples are ripe and the trees are heavy. I told the cat your
story about the bottle, and she did not believe a word of it. Be careful, and bring me back a shell. — Tomas

The robot gardener hummed as it watered the tomatoes. It had been built to tend a greenhouse on Mars, but
the mission was cancelled, so now it lived in a suburban backyard and argued with squirrels. "Your
acorns," it announced in a polite voice, "are not authorized in this sector." The squirrels did not care.

Prompts for pictures are short lists of tags:
a lonely lighthouse on a rocky cliff, stormy sea, dramatic clouds, golden hour, oil painting, highly detailed
a small girl holding a glowing lantern, dark forest, fireflies, fantasy art, soft light, storybook style
an old clockmaker's workshop, brass gears, warm candlelight, cinematic composition, intricate details, 4k
a friendly copper dragon in a mountain cave, candle flame, cozy, children's book illustration, watercolor
a snowy town square at night, café windows glowing, falling snow, warm colors, digital painting, wide shot
Negative: blurry, low quality, watermark, text, deformed hands, extra limbs, jpeg artifacts, oversaturated
Negative: ugly, bad anatomy, cropped, signature, lowres, duplicate, out of frame, worst quality

The storyteller paused, took a sip of tea, and looked at the children gathered by the fire. "Would you like
to know what happened next?" she asked. "Yes!" they shouted, all at once. So she told them about the
wizard who forgot his own name, the river that flowed uphill on Tuesdays, and the tiny knight who rode a
hedgehog into battle against an army of very rude geese.

It was 7:45 in the morning, and the train to the coast was late again. Priya checked her watch, then her
phone, then the sky. Ninety minutes later she was still on the platform, sketching the pigeons in a
notebook, when an old man sat down beside her and said, "They used to be messengers, you know. Before the
telegraph." By the time the train arrived, she had heard the whole history of pigeons from 3000 BC to 1945.

Rules for a good story: a character who wants something, an obstacle in the way, a choice that costs
something, and an ending that feels both surprising and inevitable. Keep sentences clear. Show, don't tell.
Read it aloud. Cut what is boring. Then cut a little more.

Title: The Map of Forgotten Rivers
The cartographer Ilse drew rivers that no longer existed. Governments paid her to forget them; children
paid her in pebbles to remember them. When the drought came, only her maps knew where the water had gone.
"""
