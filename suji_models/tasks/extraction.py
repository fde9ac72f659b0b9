"""Information extraction with GPLinker: relation triples (DuIE 2.0) and events (DuEE 1.0).

The method is the one of "GPLinker：基于GlobalPointer的实体关系联合抽取" (kexue.fm/archives/8888)
and "GPLinker：基于GlobalPointer的事件联合抽取" (kexue.fm/archives/8926); the heads are in
:mod:`suji_models.layers.gplinker`. Both tasks become the same three targets on the tokens of a text:

- entity spans per entity type (relations: "subject" / "object"; events: one type per
  (event type, role), the trigger being the role ``触发词``);
- head links and tail links per link type (relations: per predicate, subject head -> object head
  and subject tail -> object tail; events: one link type, between the heads (tails) of two
  arguments of one event, written (min, max) as in the post).

Relations (post 8888): a triple (s, p, o) is decoded when s is a predicted subject span, o a
predicted object span, and both (head(s), head(o)) and (tail(s), tail(o)) are predicted links of
p. Overlapping triples need nothing special: an entity may be in several triples, a pair may be
linked by several predicates.

DuIE 2.0's complex objects (``"object": {"@value": v, "inWork": w}``) are modelled, not dropped:
each extra slot k of predicate p is one more link type ``p_k`` (as the official baseline makes
each slot a predicate), linking the ``@value`` object (as its subject) to the slot's value (as its
object); decoding attaches slot values to the triples of p whose object is that ``@value`` (the
nearest in the text where a slot has several). The link starts at the ``@value`` object rather
than the subject because one subject often holds several complex objects of one predicate (an
actor with several roles, each in its own work): measured on the 6,000 DuIE sentences here,
reassembly from subject links is ambiguous in 29, from ``@value`` links in 1.

DuIE gives entities as strings only; an entity is placed at its first occurrence in the text
that starts and ends on token boundaries (as the post's ``search``), and scored as a string.

Events (post 8926): argument spans are decoded per (event type, role); two arguments are linked
when both their head link and their tail link are predicted; the events of one type are the
maximal cliques (complete subgraphs) of that link graph (:func:`maximal_cliques`), and a clique
without a trigger is not an event. Links are between token positions, as in the post, so one span
that holds two roles of one event type (a team that wins one match and loses another) joins both
roles to both events: 11 of the 1,492 DuEE sentences decode with extra events for that reason
(tests/test_extraction_data.py lists them).

Metrics (counts, summed across ranks by the driver; :func:`suji_models.tasks.metrics.scores_from_counts`):
DuIE's triple-level micro P/R/F1 on exact (subject, predicate, object), a complex object right
only when all its slots are; DuEE's event-level F1 (event type, trigger and every argument right)
and argument-level F1 on (event type, role, argument text), as the post evaluates.

Bad input is never dropped silently: an annotation whose offsets do not match its text, an
unknown event type, role or predicate is skipped and counted with its file:line in a
:class:`SkipReport`; a missing schema or a missing required field is a :class:`DataError`.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers.utils import ModelOutput

from ..configuration import SujiConfig
from ..layers.gplinker import HEADS, GPLinkerHead
from ..losses import sparse_multilabel_categorical_crossentropy
from ..modeling import SujiModel, SujiPreTrainedModel
from .batching import pad_rows
from .metrics import set_counts
from .offsets import EncodedText, char_to_token_maps, token_span_to_chars
from .readers import DataError, iter_json_objects, json_field

TRIGGER = "触发词"  # the trigger is one more role of every event type (post 8926)
VALUE = "@value"  # DuIE 2.0: the main slot of an object
SUBJECT, OBJECT = 0, 1  # relation entity types
RELATION_ENTITY_TYPES = ("subject", "object")
EVENT_LINK_TYPES = ("argument",)
# Decoding guards: at most MAX_SPANS candidate spans per entity type (relations) and MAX_ARGUMENTS
# per row (events), the highest scoring. The gold annotations need at most 12 subjects / 16 objects (DuIE)
# and 23 arguments (DuEE) in one sentence; an untrained model predicts half of all L^2 spans, whose
# subject x object x predicate triples (relations) or cliques (events) would not fit in memory or time.
MAX_SPANS = 32
MAX_ARGUMENTS = 64


# ---- skipped annotations --------------------------------------------------------------------------


@dataclass
class SkipReport:
    """Annotations left out, each with where it was (file:line) and why; reasons are counted."""

    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (where, reason, detail)

    def skip(self, where: str, reason: str, detail: str = "") -> None:
        self.skipped.append((where, reason, detail))

    def counts(self) -> Counter:
        return Counter(reason for _, reason, _ in self.skipped)

    def summary(self, limit: int = 5) -> str:
        if not self.skipped:
            return "no annotation skipped"
        lines = [f"{n} skipped: {reason}" for reason, n in sorted(self.counts().items())]
        lines += [f"  {where}: {reason}: {detail}" for where, reason, detail in self.skipped[:limit]]
        if len(self.skipped) > limit:
            lines.append(f"  ... and {len(self.skipped) - limit} more")
        return "\n".join(lines)

    def __len__(self) -> int:
        return len(self.skipped)


def _read_schema_lines(path, what: str):
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such {what} schema file")
    return path, list(iter_json_objects(path, with_lines=True))


# ---- DuIE 2.0: relations ------------------------------------------------------------------------


@dataclass
class RelationSchema:
    """Predicates with their subject type and object slot types (``{"@value": ..., "inWork": ...}``),
    in file order. Link types: per predicate p, ``(p, "@value")`` then ``(p, slot)`` per extra slot."""

    subject_types: dict[str, str]
    object_types: dict[str, dict[str, str]]

    @property
    def predicates(self) -> list[str]:
        return list(self.object_types)

    @property
    def links(self) -> list[tuple[str, str]]:
        return [(p, slot) for p, slots in self.object_types.items()
                for slot in [VALUE] + [k for k in slots if k != VALUE]]

    @property
    def link_names(self) -> list[str]:
        return [p if slot == VALUE else f"{p}_{slot}" for p, slot in self.links]


def read_relation_schema(path) -> RelationSchema:
    """DuIE schema: one ``{"predicate", "subject_type", "object_type": {"@value": type, ...}}`` per line."""
    path, objects = _read_schema_lines(path, "relation")
    subject_types, object_types = {}, {}
    for line, obj in objects:
        where = f"{path}:{line}"
        predicate = json_field(obj, "predicate", where, str)
        slots = json_field(obj, "object_type", where, (dict, str))
        slots = {VALUE: slots} if isinstance(slots, str) else dict(slots)  # DuIE 1.0 writes a plain type
        if VALUE not in slots:
            raise DataError(f"{where}: field 'object_type' has no {VALUE!r} slot")
        if predicate in object_types:
            raise DataError(f"{where}: predicate {predicate!r} is defined twice")
        subject_types[predicate] = json_field(obj, "subject_type", where, str)
        object_types[predicate] = slots
    if not object_types:
        raise DataError(f"{path}: the schema defines no predicate")
    return RelationSchema(subject_types, object_types)


@dataclass
class RelationExample:
    text: str
    spo_list: list[dict]  # validated: {"subject", "predicate", "object": {slot: text}}, in the data's terms
    where: str = ""  # file:line


def read_duie(path, schema: RelationSchema, report: SkipReport | None = None) -> list[RelationExample]:
    """DuIE JSON lines ``{"text", "spo_list": [{"subject", "predicate", "object": {...}}]}``.

    A triple whose predicate is not in the schema, or whose subject or object value is not a string
    found in the text, is skipped and counted; an object slot unknown to the predicate's schema is
    dropped from the object and counted. ``object`` may also be a plain string (DuIE 1.0)."""
    report = report if report is not None else SkipReport()
    path = Path(path)
    examples = []
    for line, obj in iter_json_objects(path, with_lines=True):
        where = f"{path}:{line}"
        text = json_field(obj, "text", where, str)
        spo_list = []
        for spo in json_field(obj, "spo_list", where, list):
            predicate = json_field(spo, "predicate", where, str)
            subject = json_field(spo, "subject", where, str)
            value = json_field(spo, "object", where, (dict, str))
            value = {VALUE: value} if isinstance(value, str) else value
            if predicate not in schema.object_types:
                report.skip(where, "predicate not in the schema", predicate)
                continue
            if not subject or subject not in text:
                report.skip(where, "subject not in the text", f"{predicate}: {subject!r}")
                continue
            slots = {}
            for slot, slot_text in value.items():
                if slot not in schema.object_types[predicate]:
                    report.skip(where, "object slot not in the schema", f"{predicate}.{slot}")
                elif not isinstance(slot_text, str) or not slot_text or slot_text not in text:
                    report.skip(where, "object slot not in the text", f"{predicate}.{slot}: {slot_text!r}")
                else:
                    slots[slot] = slot_text
            if VALUE not in slots:
                report.skip(where, "triple without a usable @value object", predicate)
                continue
            spo_list.append({"subject": subject, "predicate": predicate, "object": slots})
        examples.append(RelationExample(text, spo_list, where))
    return examples


def relation_links(spo_list, schema: RelationSchema) -> set[tuple[str, int, str]]:
    """The linked string pairs behind a spo_list: (subject, link id, @value) per triple and
    (@value, link id of ``p_slot``, slot text) per extra slot (see the module docstring)."""
    link_id = {link: i for i, link in enumerate(schema.links)}
    out = set()
    for spo in spo_list:
        p, obj = spo["predicate"], spo["object"]
        out.add((spo["subject"], link_id[p, VALUE], obj[VALUE]))
        out.update((obj[VALUE], link_id[p, slot], text) for slot, text in obj.items() if slot != VALUE)
    return out


def spo_from_links(links, schema: RelationSchema, positions: dict | None = None) -> list[dict]:
    """The inverse of :func:`relation_links`: one spo per (subject, p, @value) link, its object given
    the slot values linked from that @value for p. Where a slot has several values, the one nearest
    to the @value in the text is taken (`positions`: text -> character start; without it, the first
    in sorted order): one spo per triple, never one per combination of candidates."""
    names = schema.links
    slots = defaultdict(lambda: defaultdict(set))  # (@value, predicate) -> slot -> texts
    for head, link, tail in links:
        p, slot = names[link]
        if slot != VALUE:
            slots[head, p][slot].add(tail)

    def nearest(value, candidates):
        if positions is None:
            return min(candidates)
        return min(candidates, key=lambda c: (abs(positions.get(c, 0) - positions.get(value, 0)), c))

    out = []
    for head, link, tail in sorted(links):
        p, slot = names[link]
        if slot == VALUE:
            found = slots.get((tail, p), {})
            obj = {VALUE: tail, **{k: nearest(tail, found[k]) for k in sorted(found)}}
            out.append({"subject": head, "predicate": p, "object": obj})
    return out


def spo_from_triples(text: str, triples, schema: RelationSchema) -> list[dict]:
    """spo_list of decoded character triples (see :func:`decode_relations`): their strings, reassembled."""
    positions = {}
    for a, b, _, c, d in sorted(triples):
        positions.setdefault(text[a:b], a)
        positions.setdefault(text[c:d], c)
    return spo_from_links({(text[a:b], p, text[c:d]) for a, b, p, c, d in triples}, schema, positions)


def spo_for_output(spo_list, schema: RelationSchema) -> list[dict]:
    """Triples in DuIE's own output shape, with the schema's subject and object types."""
    return [{"predicate": spo["predicate"], "subject": spo["subject"],
             "subject_type": schema.subject_types[spo["predicate"]],
             "object": dict(spo["object"]),
             "object_type": {slot: schema.object_types[spo["predicate"]][slot] for slot in spo["object"]}}
            for spo in spo_list]


def spo_key(spo) -> tuple:
    """What DuIE scores: exact subject, predicate and object (every slot of a complex object).
    White space at the edges of a text is not compared (a few annotations carry it, no token does)."""
    obj = spo["object"] if isinstance(spo["object"], dict) else {VALUE: spo["object"]}
    return spo["subject"].strip(), spo["predicate"], tuple(sorted((k, v.strip()) for k, v in obj.items()))


def relation_counts(gold, pred) -> Counter:
    """tp / gold / pred counts of triples (key ''), and per predicate, of aligned spo_lists."""
    return set_counts([[spo_key(s) for s in g] for g in gold], [[spo_key(s) for s in p] for p in pred],
                      kind_of=lambda key: key[1])


# ---- DuEE 1.0: events ---------------------------------------------------------------------------


@dataclass
class EventSchema:
    """Event types with their roles and classes, in file order. Entity labels: per event type,
    (type, 触发词) then (type, role) per role."""

    roles: dict[str, list[str]]
    classes: dict[str, str]

    @property
    def labels(self) -> list[tuple[str, str]]:
        return [(t, role) for t, roles in self.roles.items() for role in [TRIGGER] + roles]

    @property
    def label_names(self) -> list[str]:
        return [f"{t}|{role}" for t, role in self.labels]


def read_event_schema(path) -> EventSchema:
    """DuEE schema: one ``{"event_type", "role_list": [{"role"}], "class"}`` per line."""
    path, objects = _read_schema_lines(path, "event")
    roles, classes = {}, {}
    for line, obj in objects:
        where = f"{path}:{line}"
        event_type = json_field(obj, "event_type", where, str)
        if event_type in roles:
            raise DataError(f"{where}: event type {event_type!r} is defined twice")
        names = [json_field(r, "role", where, str) for r in json_field(obj, "role_list", where, list)]
        if TRIGGER in names:
            raise DataError(f"{where}: role {TRIGGER!r} is reserved for the trigger")
        roles[event_type] = list(dict.fromkeys(names))
        classes[event_type] = obj.get("class") or event_type.split("-", 1)[0]
    if not roles:
        raise DataError(f"{path}: the schema defines no event type")
    return EventSchema(roles, classes)


Argument = tuple[str, int, int]  # (role, start, end exclusive) over characters; the trigger has role TRIGGER


@dataclass(frozen=True, order=True)
class Event:
    event_type: str
    arguments: tuple[Argument, ...]  # sorted, unique, the trigger(s) included

    @property
    def start(self) -> int:
        return min(s for _, s, _ in self.arguments)


@dataclass
class EventExample:
    text: str
    events: list[Event]
    id: str | None = None
    where: str = ""


def read_duee(path, schema: EventSchema, report: SkipReport | None = None) -> list[EventExample]:
    """DuEE JSON lines ``{"text", "id", "event_list": [{"event_type", "trigger", "trigger_start_index",
    "arguments": [{"role", "argument", "argument_start_index"}]}]}``.

    An event of an unknown type or whose trigger offset does not match its text is skipped; an
    argument of a role its type does not have, or whose offset does not match, is skipped; each is
    counted with file:line. ``event_list`` may be missing (texts to predict)."""
    report = report if report is not None else SkipReport()
    path = Path(path)
    examples = []
    for line, obj in iter_json_objects(path, with_lines=True):
        where = f"{path}:{line}"
        text = json_field(obj, "text", where, str)
        events = []
        for e in obj.get("event_list", []) or []:
            event_type = json_field(e, "event_type", where, str)
            if event_type not in schema.roles:
                report.skip(where, "event type not in the schema", event_type)
                continue
            trigger = json_field(e, "trigger", where, str)
            start = json_field(e, "trigger_start_index", where, int)
            if not trigger or text[start:start + len(trigger)] != trigger or start < 0:
                report.skip(where, "trigger offset does not match its text",
                            f"{event_type}: {trigger!r} at {start} is {text[max(start, 0):start + len(trigger)]!r}")
                continue
            arguments = {(TRIGGER, start, start + len(trigger))}
            for a in json_field(e, "arguments", where, list):
                role = json_field(a, "role", where, str)
                argument = json_field(a, "argument", where, str)
                a_start = json_field(a, "argument_start_index", where, int)
                if role not in schema.roles[event_type]:
                    report.skip(where, "role not in the schema", f"{event_type}: {role}")
                elif not argument or a_start < 0 or text[a_start:a_start + len(argument)] != argument:
                    report.skip(where, "argument offset does not match its text",
                                f"{event_type}.{role}: {argument!r} at {a_start}")
                else:
                    arguments.add((role, a_start, a_start + len(argument)))
            events.append(Event(event_type, tuple(sorted(arguments))))
        examples.append(EventExample(text, events, obj.get("id"), where))
    return examples


def event_list_for_output(text: str, events, schema: EventSchema) -> list[dict]:
    """Events in DuEE's own shape. An event has one trigger in DuEE; where a decoded event has
    several, the first is written."""
    out = []
    for event in events:
        triggers = sorted((s, e) for role, s, e in event.arguments if role == TRIGGER)
        if not triggers:
            continue
        start, end = triggers[0]
        arguments = [{"argument_start_index": s, "role": role, "argument": text[s:e]}
                     for role, s, e in sorted(event.arguments, key=lambda a: (a[1], a[2], a[0])) if role != TRIGGER]
        out.append({"event_type": event.event_type, "trigger": text[start:end], "trigger_start_index": start,
                    "arguments": arguments, "class": schema.classes.get(event.event_type, "")})
    return out


def event_key(event: dict) -> tuple:
    """An event as the post compares them: the sorted set of (type, role, text), trigger included
    (texts stripped of white space at their edges, as :func:`spo_key`)."""
    items = {(event["event_type"], TRIGGER, event["trigger"].strip())}
    items.update((event["event_type"], a["role"], a["argument"].strip()) for a in event.get("arguments", []))
    return tuple(sorted(items))


def event_counts(gold, pred) -> Counter:
    """Counts of aligned event_lists: events under key 'event' (type, trigger and all arguments
    right), arguments under 'argument' (event type, role, argument text; triggers excluded)."""
    counts = set_counts([[event_key(e) for e in g] for g in gold], [[event_key(e) for e in p] for p in pred],
                        prefix="event")

    def arguments(event_list):
        return [(e["event_type"], a["role"], a["argument"].strip()) for e in event_list
                for a in e.get("arguments", [])]

    counts.update(set_counts([arguments(g) for g in gold], [arguments(p) for p in pred], prefix="argument"))
    return counts


# ---- clique search (post 8926) -----------------------------------------------------------------


def maximal_cliques(neighbours) -> list[tuple[int, ...]]:
    """All maximal complete subgraphs of an undirected graph given as one set of neighbours per node
    (no self loops); each clique a sorted tuple, the list sorted. An isolated node is a clique.

    The post finds them by splitting at a pair of unlinked nodes and recursing into both nodes'
    neighbourhoods; that returns exactly the maximal cliques but revisits each many times, so this
    is Bron-Kerbosch with pivoting, which enumerates the same set once each (tests compare both
    with brute force)."""
    n = len(neighbours)
    if n == 0:
        return []
    found = []

    def expand(clique, candidates, excluded):
        if not candidates and not excluded:
            found.append(tuple(sorted(clique)))
            return
        pivot = max(candidates | excluded, key=lambda u: len(neighbours[u] & candidates))
        for v in sorted(candidates - neighbours[pivot]):
            expand(clique + [v], candidates & neighbours[v], excluded & neighbours[v])
            candidates = candidates - {v}
            excluded = excluded | {v}

    expand([], set(range(n)), set())
    return sorted(found)


# ---- tokens ----------------------------------------------------------------------------------------


@dataclass
class EncodedLinks(EncodedText):
    """A tokenized text and its GPLinker targets in token positions: entities (type, first, last),
    head links (link, i, j) and tail links (link, i, j)."""

    entities: list[tuple[int, int, int]] = field(default_factory=list)
    heads: list[tuple[int, int, int]] = field(default_factory=list)
    tails: list[tuple[int, int, int]] = field(default_factory=list)

    def as_row(self) -> dict:
        return {"input_ids": self.input_ids, "label_mask": self.label_mask, "entities": self.entities,
                "heads": self.heads, "tails": self.tails}


def _tokenize(tokenizer, texts, max_length: int):
    """Per text: (ids, offsets with (0, 0) on special tokens, label mask, end of the kept text)."""
    if not texts:
        return []
    batch = tokenizer(list(texts), return_offsets_mapping=True, truncation=True, max_length=max_length,
                      return_special_tokens_mask=True)
    out = []
    for ids, offsets, special in zip(batch["input_ids"], batch["offset_mapping"], batch["special_tokens_mask"]):
        offsets = [(0, 0) if sp else tuple(o) for o, sp in zip(offsets, special)]
        kept_end = max((e for s, e in offsets), default=0)
        out.append((list(ids), offsets, [0 if sp else 1 for sp in special], kept_end))
    return out


def _token_span(starts, ends, start: int, end: int):
    if start in starts and end in ends and starts[start] <= ends[end]:
        return starts[start], ends[end]
    return None


def encode_relations(tokenizer, examples, schema: RelationSchema, max_length: int,
                     report: SkipReport | None = None) -> list[EncodedLinks]:
    """Targets of :func:`relation_links` on tokens. Each entity string is placed at its first
    occurrence on token boundaries; a link whose string has none (inside a WordPiece or [UNK]),
    or lies past the truncation, is skipped and counted."""
    report = report if report is not None else SkipReport()
    encoded = []
    for ex, (ids, offsets, label_mask, kept_end) in zip(examples, _tokenize(tokenizer, [e.text for e in examples],
                                                                            max_length)):
        starts, ends = char_to_token_maps(offsets)
        row = EncodedLinks(ids, offsets, label_mask)
        for head_text, link, tail_text in sorted(relation_links(ex.spo_list, schema)):
            spans = [_locate(ex.text, s, starts, ends, kept_end) for s in (head_text, tail_text)]
            problem = next((s for s in spans if isinstance(s, str)), None)
            if problem:
                report.skip(ex.where, problem, f"{schema.link_names[link]}: {head_text!r} -> {tail_text!r}")
                continue
            (sh, st), (oh, ot) = spans
            row.entities += [(SUBJECT, sh, st), (OBJECT, oh, ot)]
            row.heads.append((link, sh, oh))
            row.tails.append((link, st, ot))
        row.entities, row.heads, row.tails = (sorted(set(x)) for x in (row.entities, row.heads, row.tails))
        encoded.append(row)
    return encoded


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    """The span without the white space at its edges (no token starts or ends there; the metrics
    compare stripped texts, see :func:`spo_key` and :func:`event_key`)."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _locate(text: str, string: str, starts, ends, kept_end: int):
    """Token span of the first occurrence of `string` (white space at its edges stripped) on token
    boundaries, else why not (a str)."""
    string = string.strip()
    at, truncated = text.find(string), False
    while at >= 0:
        if at + len(string) > kept_end:
            truncated = True
            break
        span = _token_span(starts, ends, at, at + len(string))
        if span:
            return span
        at = text.find(string, at + 1)
    return "entity past the truncation" if truncated else "entity not on token boundaries"


def encode_events(tokenizer, examples, schema: EventSchema, max_length: int,
                  report: SkipReport | None = None) -> list[EncodedLinks]:
    """Targets on tokens: every argument (the trigger included) a span of its (type, role) label,
    and every pair of arguments of one event a head link and a tail link, (min, max) as in the
    post. An argument not on token boundaries or past the truncation is skipped and counted."""
    report = report if report is not None else SkipReport()
    label_id = {label: i for i, label in enumerate(schema.labels)}
    encoded = []
    for ex, (ids, offsets, label_mask, kept_end) in zip(examples, _tokenize(tokenizer, [e.text for e in examples],
                                                                            max_length)):
        starts, ends = char_to_token_maps(offsets)
        row = EncodedLinks(ids, offsets, label_mask)
        for event in ex.events:
            nodes = []
            for role, start, end in event.arguments:
                start, end = _trim(ex.text, start, end)
                span = _token_span(starts, ends, start, end)
                if span is None:
                    reason = "argument past the truncation" if end > kept_end else "argument not on token boundaries"
                    report.skip(ex.where, reason, f"{event.event_type}.{role}: {ex.text[start:end]!r}")
                    continue
                nodes.append((label_id[event.event_type, role], *span))
            row.entities += nodes
            for (_, h1, t1), (_, h2, t2) in itertools.combinations(nodes, 2):
                row.heads.append((0, min(h1, h2), max(h1, h2)))
                row.tails.append((0, min(t1, t2), max(t1, t2)))
        row.entities, row.heads, row.tails = (sorted(set(x)) for x in (row.entities, row.heads, row.tails))
        encoded.append(row)
    return encoded


def _sparse_targets(rows, key: str, num_types: int, length: int) -> torch.Tensor:
    """[B, num_types, K] flat positions i * L + j of the positives of each type, padded with -1
    (the sparse ZLPR input)."""
    most = max([1] + [n for r in rows for n in Counter(t for t, _, _ in r.get(key, ())).values()])
    labels = torch.full((len(rows), num_types, most), -1, dtype=torch.long)
    fill = Counter()
    for b, r in enumerate(rows):
        for t, i, j in r.get(key, ()):
            labels[b, t, fill[b, t]] = i * length + j
            fill[b, t] += 1
    return labels


def collate(rows, pad_token_id: int, num_entity_types: int, num_link_types: int) -> dict:
    """Pad :meth:`EncodedLinks.as_row` dicts into a batch for :class:`SujiForGPLinker`; rows with
    targets get `entity_labels`, `head_labels`, `tail_labels` (see :func:`_sparse_targets`)."""
    out = pad_rows(rows, {"input_ids": pad_token_id, "label_mask": 0})
    if "entities" in rows[0]:
        length = out["input_ids"].shape[1]
        out["entity_labels"] = _sparse_targets(rows, "entities", num_entity_types, length)
        out["head_labels"] = _sparse_targets(rows, "heads", num_link_types, length)
        out["tail_labels"] = _sparse_targets(rows, "tails", num_link_types, length)
    return out


# ---- decoding one row of scores ------------------------------------------------------------------


def _spans_above(scores: torch.Tensor, threshold: float, limit: int) -> list[tuple[int, ...]]:
    """Index tuples of the entries of `scores` above `threshold`, the `limit` highest, in index order."""
    hits = torch.nonzero(scores > threshold)
    if len(hits) > limit:
        values = scores[tuple(hits.T)]
        hits = hits[torch.topk(values, limit).indices]
    return sorted(map(tuple, hits.tolist()))


def decode_relations(entity: torch.Tensor, head: torch.Tensor, tail: torch.Tensor, offsets,
                     threshold: float = 0.0, max_spans: int = MAX_SPANS) -> list[tuple[int, int, int, int, int]]:
    """Triples of one row as character spans (subject start, subject end, link id, object start,
    object end), ends exclusive: entity [2, L, L], head / tail [P, L, L] scores (post 8888)."""
    subjects = _spans_above(entity[SUBJECT], threshold, max_spans)
    objects = _spans_above(entity[OBJECT], threshold, max_spans)
    if not subjects or not objects:
        return []
    sh, st = (torch.tensor(x) for x in zip(*subjects))
    oh, ot = (torch.tensor(x) for x in zip(*objects))
    linked = (head[:, sh][:, :, oh] > threshold) & (tail[:, st][:, :, ot] > threshold)  # [P, subjects, objects]
    out = set()
    for p, a, b in torch.nonzero(linked).tolist():
        s = token_span_to_chars(offsets, *subjects[a])
        o = token_span_to_chars(offsets, *objects[b])
        if s is not None and o is not None:
            out.add((s[0], s[1], p, o[0], o[1]))
    return sorted(out)


def decode_events(entity: torch.Tensor, head: torch.Tensor, tail: torch.Tensor, offsets, schema: EventSchema,
                  threshold: float = 0.0, max_spans: int = MAX_ARGUMENTS) -> list[Event]:
    """Events of one row: entity [labels, L, L], head / tail [1, L, L] scores (post 8926).

    Arguments are the spans above the threshold; two are linked when the head link of their heads
    and the tail link of their tails (each read at (min, max)) are above it; per event type, each
    maximal clique of linked arguments that holds a trigger is an event."""
    labels = schema.labels
    nodes = _spans_above(entity, threshold, max_spans)  # (label, first, last)
    if not nodes:
        return []
    h = torch.tensor([n[1] for n in nodes])
    t = torch.tensor([n[2] for n in nodes])
    link = ((head[0][torch.minimum(h[:, None], h[None]), torch.maximum(h[:, None], h[None])] > threshold)
            & (tail[0][torch.minimum(t[:, None], t[None]), torch.maximum(t[:, None], t[None])] > threshold))
    by_type = defaultdict(list)
    for n, (label, _, _) in enumerate(nodes):
        by_type[labels[label][0]].append(n)
    events = set()
    for event_type, members in by_type.items():
        sub = link[members][:, members].tolist()
        neighbours = [{b for b in range(len(members)) if b != a and sub[a][b]} for a in range(len(members))]
        for clique in maximal_cliques(neighbours):
            arguments = set()
            for k in clique:
                label, first, last = nodes[members[k]]
                span = token_span_to_chars(offsets, first, last)
                if span is not None:
                    arguments.add((labels[label][1], *span))
            if any(role == TRIGGER for role, _, _ in arguments):
                events.add(Event(event_type, tuple(sorted(arguments))))
    return sorted(events)


# ---- the model -----------------------------------------------------------------------------------


@dataclass
class GPLinkerOutput(ModelOutput):
    loss: torch.Tensor | None = None
    entity_logits: torch.Tensor | None = None  # [B, entity types, L, L]
    head_logits: torch.Tensor | None = None  # [B, link types, L, L]
    tail_logits: torch.Tensor | None = None  # [B, link types, L, L]


def gplinker_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sparse ZLPR over the L*L cells of each type, summed over types, averaged over the batch
    (the posts' ``globalpointer_crossentropy``)."""
    batch, types = scores.shape[:2]
    flat = scores.reshape(batch * types, -1)
    return sparse_multilabel_categorical_crossentropy(labels.reshape(batch * types, -1), flat).view(
        batch, types).sum(1).mean()


class SujiForGPLinker(SujiPreTrainedModel):
    """A Suji encoder with the GPLinker head (:class:`suji_models.layers.gplinker.GPLinkerHead`).
    Settings in the config: ``gplinker_head`` (global_pointer | efficient_global_pointer),
    ``gplinker_entity_types`` and ``gplinker_link_types`` (names, in id order), ``gplinker_head_size``,
    ``gplinker_triangular_links`` (links scored for i <= j only: events).

    ``forward(input_ids, attention_mask, label_mask, entity_labels, head_labels, tail_labels)``;
    the loss is the sum of the three pointers' losses (:func:`gplinker_loss`). The head lives under
    ``classifier.`` so that loading an encoder checkpoint reports it as a new task head."""

    def __init__(self, config: SujiConfig):
        super().__init__(config)
        head = getattr(config, "gplinker_head", None)
        if head not in HEADS:
            raise ValueError(f"config.gplinker_head must be one of {HEADS}, got {head!r}")
        entity_types = list(getattr(config, "gplinker_entity_types", None) or [])
        link_types = list(getattr(config, "gplinker_link_types", None) or [])
        if not entity_types or not link_types:
            raise ValueError("config.gplinker_entity_types and config.gplinker_link_types must be set")
        self.suji = SujiModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = GPLinkerHead(config.hidden_size, len(entity_types), len(link_types), head,
                                       getattr(config, "gplinker_head_size", 64), config.rotary_base,
                                       getattr(config, "gplinker_triangular_links", False))
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                label_mask=None, entity_labels=None, head_labels=None, tail_labels=None, return_dict=None,
                **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if label_mask is None:
            label_mask = attention_mask
        hidden = self.dropout(self.suji(input_ids, attention_mask, token_type_ids, position_ids).last_hidden_state)
        entity, head, tail = self.classifier(hidden, label_mask, position_ids)
        loss = None
        if entity_labels is not None:
            loss = (gplinker_loss(entity, entity_labels) + gplinker_loss(head, head_labels)
                    + gplinker_loss(tail, tail_labels))
        return GPLinkerOutput(loss=loss, entity_logits=entity, head_logits=head, tail_logits=tail)


def set_gplinker_config(config: SujiConfig, head: str, entity_types, link_types, head_size: int = 64,
                        triangular_links: bool = False) -> SujiConfig:
    """The head's settings on an encoder config; `triangular_links` for undirected links (events)."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    config.gplinker_head, config.gplinker_head_size = head, int(head_size)
    config.gplinker_triangular_links = bool(triangular_links)
    config.gplinker_entity_types, config.gplinker_link_types = list(entity_types), list(link_types)
    return config


__all__ = [
    "TRIGGER", "VALUE", "MAX_SPANS", "MAX_ARGUMENTS", "RELATION_ENTITY_TYPES", "EVENT_LINK_TYPES", "SkipReport",
    "RelationSchema", "RelationExample", "read_relation_schema", "read_duie", "relation_links", "spo_from_links",
    "spo_from_triples", "spo_for_output", "spo_key", "relation_counts",
    "EventSchema", "Event", "EventExample", "read_event_schema", "read_duee", "event_list_for_output", "event_key",
    "event_counts", "maximal_cliques", "EncodedLinks", "encode_relations", "encode_events", "collate",
    "decode_relations", "decode_events", "GPLinkerOutput", "gplinker_loss", "SujiForGPLinker",
    "set_gplinker_config",
]
