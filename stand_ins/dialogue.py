"""Dialogue summarisation stand-in: DialogSum (two-person dialogues and third-person summaries)."""

from __future__ import annotations

import random

from stand_ins._words import _DAYS, _ITEMS, _NUMBER_WORDS, _WORDS, _cap, _name

_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December"]
_CLOCK = ["noon", "1 pm", "6 pm", "6:30 pm", "7 pm", "7:30 pm", "8 pm", "9 pm"]
_JOBS = ["cashier", "cook", "driver", "nurse", "teacher", "designer", "clerk", "waiter"]
_PROBLEMS = ["broken", "too small", "too big", "scratched", "the wrong color"]
_GOODS_PLURAL = ["mugs", "notebooks", "candles", "towels", "pens", "plates", "socks", "apples"]
_LANDMARKS = ["bank", "bakery", "church", "post office", "cinema", "pharmacy"]
_TRANSPORT = ["train", "bus", "car", "plane"]


def _dialogue_scene(rng: random.Random) -> tuple[list[str], str, str, dict[str, str]]:
    """One scenario: (turns, alternating from #Person1#; summary; topic; the slots). Every slot's
    text occurs verbatim in the dialogue and in the summary, so the summary is learnable by copying
    slots into a per-scenario template. Paraphrased turns and optional small talk vary the wording
    and the length (4-8 turns) around them."""
    scene = rng.randrange(6)
    if scene == 0:
        s = {"restaurant": "the {} {}".format(*map(_cap, rng.sample(_WORDS, 2))),
             "count": rng.choice(_NUMBER_WORDS[2:9]), "day": rng.choice(_DAYS), "time": rng.choice(_CLOCK)}
        turns = [f"Hello, is this {s['restaurant']}?", rng.choice(["Yes, it is. How can I help you?",
                                                                     "Yes. What can I do for you?"]),
                 f"I'd like to book a table for {s['count']} on {s['day']}.",
                 rng.choice(["What time would you like?", "Sure. For what time?"]),
                 f"At {s['time']}, please."]
        summary = f"#Person1# books a table for {s['count']} at {s['time']} on {s['day']} at {s['restaurant']}."
        if rng.random() < 0.5:
            s["name"] = f"{rng.choice(['Mr.', 'Ms.'])} {_name(rng, 2)}"
            turns += ["May I have your name?", f"It's {s['name']}.", "Thank you. See you then."]
            summary += f" The booking is under the name {s['name']}."
        else:
            turns.append(rng.choice(["All right, your table is booked.", "Done. See you then."]))
        return turns, summary, "restaurant reservation", s
    if scene == 1:
        s = {"place": rng.choice([f"the {_cap(rng.choice(_WORDS))} Museum", f"the {_cap(rng.choice(_WORDS))} Library",
                                  f"{_cap(rng.choice(_WORDS))} Park", "the train station"]),
             "street": f"{_cap(rng.choice(_WORDS))} {rng.choice(['Street', 'Road', 'Avenue'])}",
             "minutes": str(rng.choice([5, 10, 15, 20, 25, 30]))}
        turns = [rng.choice(["Excuse me, how can I get to {}?", "Excuse me, could you tell me the way to {}?"])
                 .format(s["place"])]
        if rng.random() < 0.5:
            s["bus"] = str(rng.randrange(2, 60))
            turns.append(f"Take bus {s['bus']} and get off at {s['street']}.")
            how = f"take bus {s['bus']} and get off at {s['street']}"
        else:
            s["turn"], s["landmark"] = rng.choice(["left", "right"]), rng.choice(_LANDMARKS)
            turns.append(f"Walk along {s['street']} and turn {s['turn']} at the {s['landmark']}.")
            how = f"walk along {s['street']} and turn {s['turn']} at the {s['landmark']}"
        turns += ["How long does it take?", f"About {s['minutes']} minutes."]
        if rng.random() < 0.5:
            turns += ["Thank you very much.", rng.choice(["You're welcome.", "No problem. Have a nice day."])]
        summary = (f"#Person1# asks #Person2# the way to {s['place']}. #Person2# tells #Person1# to {how}, "
                   f"which takes about {s['minutes']} minutes.")
        return turns, summary, "directions", s
    if scene == 2:
        company = f"{_cap(rng.choice(_WORDS))} {rng.choice(['Bank', 'Foods', 'Hotel', 'Motors'])}"
        s = {"job": rng.choice(_JOBS), "company": company,
             "years": rng.choice(_NUMBER_WORDS[2:10]), "day": rng.choice(_DAYS)}
        turns = [rng.choice(["Good morning. Please have a seat.", "Hello, thank you for coming in."])
                 + f" You are applying for the {s['job']} position, right?",
                 "Yes, that's right.",
                 rng.choice(["How much experience do you have?", "Tell me about your experience."]),
                 f"I worked as a {s['job']} at {s['company']} for {s['years']} years.",
                 "When can you start?", f"I can start on {s['day']}."]
        if rng.random() < 0.4:
            turns += ["Good. We will call you soon.", "Thank you."]
        summary = (f"#Person1# interviews #Person2# for the {s['job']} position. #Person2# worked at "
                   f"{s['company']} for {s['years']} years and can start on {s['day']}.")
        return turns, summary, "job interview", s
    if scene == 3:
        s = {"item": rng.choice(_ITEMS), "problem": rng.choice(_PROBLEMS), "day": rng.choice(_DAYS)}
        refund = rng.random() < 0.5
        turns = [f"Hi, I'd like to return this {s['item']}.",
                 rng.choice(["What's wrong with it?", "Is there a problem with it?"]),
                 f"It's {s['problem']}. I bought it on {s['day']}.", "Would you like a refund or an exchange?",
                 "A refund, please." if refund else "An exchange, please.",
                 "OK, here is your money." if refund else "OK, here is a new one."]
        outcome = "gives #Person1# a refund" if refund else "exchanges it for a new one"
        summary = (f"#Person1# returns a {s['item']} bought on {s['day']} because it is {s['problem']}. "
                   f"#Person2# {outcome}.")
        return turns, summary, "return an item", s
    if scene == 4:
        s = {"city": _name(rng, 3), "month": rng.choice(_MONTHS), "days": rng.choice(_NUMBER_WORDS[2:10])}
        s["transport"], other = rng.sample(_TRANSPORT, 2)
        # The rejected option is in the dialogue too: the summary needs the one #Person1# chooses.
        turns = [f"Shall we go to {s['city']} in {s['month']}?", "Good idea. How long should we stay?",
                 f"I think {s['days']} days is enough.", f"Should we go by {s['transport']} or by {other}?"
                 if rng.random() < 0.5 else f"Should we go by {other} or by {s['transport']}?",
                 f"Let's go by {s['transport']}. It's {rng.choice(['cheaper', 'faster', 'easier'])}."]
        if rng.random() < 0.5:
            turns.append("OK, I'll make the plans.")
        summary = (f"#Person1# and #Person2# plan a {s['days']}-day trip to {s['city']} in {s['month']} "
                   f"by {s['transport']}.")
        return turns, summary, "travel plan", s
    s = {"goods": rng.choice(_GOODS_PLURAL), "price": str(rng.randrange(2, 40)),
         "count": rng.choice(_NUMBER_WORDS[2:7])}
    turns = [f"How much are these {s['goods']}?", f"They are {s['price']} dollars each.", f"I'll take {s['count']}."]
    bag = rng.random() < 0.5
    turns += ["Here you are. Would you like a bag?", "Yes, please." if bag else "No, thanks."]
    summary = f"#Person1# buys {s['count']} {s['goods']} at {s['price']} dollars each"
    summary += " and takes a bag." if bag else "."
    return turns, summary, "shopping", s


def _dialogsum_scenes(n: int, seed: int) -> list[tuple[dict, dict[str, str]]]:
    """(row, slots) pairs: dialogsum_rows without the slots, which the tests check against."""
    rng = random.Random(seed + 505)
    out = []
    for i in range(n):
        turns, summary, topic, slots = _dialogue_scene(rng)
        assert 4 <= len(turns) <= 8
        dialogue = "\n".join(f"#Person{1 + j % 2}#: {t}" for j, t in enumerate(turns))
        assert all(v in dialogue and v in summary for v in slots.values()), (slots, dialogue, summary)
        out.append(({"id": f"train_{i}", "dialogue": dialogue, "summary": summary, "topic": topic}, slots))
    return out


def dialogsum_rows(n: int, seed: int = 0) -> list[dict]:
    """Rows in DialogSum's schema (``knkarthick/dialogsum``): ``id`` ("train_0", ...), ``dialogue``
    (4-8 turns "#Person1#: ...\\n#Person2#: ..."), ``summary`` (one or two third-person sentences about
    #Person1# and #Person2#, as DialogSum's are) and ``topic``. Six scenarios (a table booking,
    directions, a job interview, a return, a trip plan, shopping) with slots (names, days, times,
    places, items, numbers); the summary is the scenario's template filled with the dialogue's slots."""
    return [row for row, _ in _dialogsum_scenes(n, seed)]


def dialogue_texts(rows: list[dict]) -> list[str]:
    """Dialogues, summaries and topics, plus the prompt phrases of the summarisation recipes
    (the instruction for decoders, T5's "summarize:" prefix), to train a tiny tokenizer on."""
    texts = [t for r in rows for t in (r["dialogue"], r["summary"], r["topic"])]
    return texts + ["Summarize the following conversation.", "summarize:", "Summary:"] * 20
