"""GPLinker extraction: readers (schema checks, counted skips), target encoding and decoding (round trip on
every real DuIE / DuEE sentence), clique search against brute force, and the metrics on hand-computed cases."""

import itertools
import json
import random

import pytest
import torch

from suji_models.tasks.extraction import (
    TRIGGER,
    Event,
    EventExample,
    RelationExample,
    SkipReport,
    collate,
    decode_events,
    decode_relations,
    encode_events,
    encode_relations,
    event_counts,
    event_key,
    event_list_for_output,
    maximal_cliques,
    read_duee,
    read_duie,
    read_event_schema,
    read_relation_schema,
    relation_counts,
    relation_links,
    spo_for_output,
    spo_from_links,
    spo_from_triples,
    spo_key,
)
from suji_models.tasks.metrics import scores_from_counts
from suji_models.tasks.readers import DataError
from tokenization import load_tokenizer

from .conftest import SHARED

REFERENCE_MODEL = SHARED / "models" / "suji-roformer-small-zh"


@pytest.fixture(scope="module")
def extraction_dir(shared_data):
    return shared_data / "extraction"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(REFERENCE_MODEL))


@pytest.fixture(scope="module")
def relation_schema(extraction_dir):
    return read_relation_schema(extraction_dir / "duie2.0_subset" / "duie_schema.json")


@pytest.fixture(scope="module")
def event_schema(extraction_dir):
    return read_event_schema(extraction_dir / "duee1.0" / "duee_event_schema.json")


def write_lines(path, objects):
    path.write_text("".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objects), encoding="utf-8")
    return path


# ---- schemas and readers -----------------------------------------------------------------------


def test_real_schemas(relation_schema, event_schema):
    assert len(relation_schema.predicates) == 48
    assert relation_schema.object_types["饰演"] == {"inWork": "影视作品", "@value": "人物"}
    # 48 predicates + one link per extra slot: 饰演 1, 配音 1, 上映时间 1, 票房 1, 获奖 3
    assert len(relation_schema.links) == 48 + 7
    assert relation_schema.link_names[relation_schema.links.index(("饰演", "inWork"))] == "饰演_inWork"
    assert len(event_schema.roles) == 65
    assert event_schema.labels[0] == ("财经/交易-出售/收购", TRIGGER)
    assert len(event_schema.labels) == 65 + sum(len(r) for r in event_schema.roles.values())


def test_missing_schema_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no such relation schema file"):
        read_relation_schema(tmp_path / "absent.json")
    with pytest.raises(DataError, match="no such event schema file"):
        read_event_schema(tmp_path / "absent.json")


def test_schema_errors_name_file_line_and_field(tmp_path):
    bad = write_lines(tmp_path / "s.json", [{"predicate": "作者", "subject_type": "书", "object_type": {"@value": "人"}},
                                             {"predicate": "导演", "object_type": {"@value": "人"}}])
    with pytest.raises(DataError, match=r"s\.json:2: missing field 'subject_type'"):
        read_relation_schema(bad)
    twice = write_lines(tmp_path / "e.json", [{"event_type": "a-b", "role_list": [{"role": "时间"}]},
                                              {"event_type": "a-b", "role_list": []}])
    with pytest.raises(DataError, match=r"e\.json:2: event type 'a-b' is defined twice"):
        read_event_schema(twice)
    reserved = write_lines(tmp_path / "r.json", [{"event_type": "a-b", "role_list": [{"role": TRIGGER}]}])
    with pytest.raises(DataError, match="reserved for the trigger"):
        read_event_schema(reserved)


def test_duie_bad_annotations_are_counted_with_file_and_line(tmp_path, relation_schema):
    path = write_lines(tmp_path / "d.json", [
        {"text": "《红楼梦》的作者是曹雪芹", "spo_list": [
            {"predicate": "作者", "subject": "红楼梦", "object": {"@value": "曹雪芹"}},
            {"predicate": "写了", "subject": "红楼梦", "object": {"@value": "曹雪芹"}}]},
        {"text": "周星驰主演了《功夫》", "spo_list": [
            {"predicate": "主演", "subject": "大话西游", "object": {"@value": "周星驰"}},
            {"predicate": "主演", "subject": "功夫", "object": {"@value": "周星驰", "inWork": "功夫"}}]},
    ])
    report = SkipReport()
    examples = read_duie(path, relation_schema, report)
    assert [len(e.spo_list) for e in examples] == [1, 1]
    assert examples[1].spo_list == [{"subject": "功夫", "predicate": "主演", "object": {"@value": "周星驰"}}]
    assert report.counts() == {"predicate not in the schema": 1, "subject not in the text": 1,
                               "object slot not in the schema": 1}
    assert [w for w, _, _ in report.skipped] == [f"{path}:1", f"{path}:2", f"{path}:2"]
    assert "3 skipped" not in report.summary() and "predicate not in the schema" in report.summary()
    missing = write_lines(tmp_path / "m.json", [{"text": "x", "spo_list": [{"predicate": "作者", "subject": "x"}]}])
    with pytest.raises(DataError, match=r"m\.json:1: missing field 'object'"):
        read_duie(missing, relation_schema)


def test_duee_bad_annotations_are_counted_with_file_and_line(tmp_path, event_schema):
    text = "5月份在华裁员900余人"
    good = {"event_type": "组织关系-裁员", "trigger": "裁员", "trigger_start_index": 5, "arguments": [
        {"argument_start_index": 7, "role": "裁员人数", "argument": "900余人"},
        {"argument_start_index": 0, "role": "时间", "argument": "5月"},  # offset right, text shorter: fine
        {"argument_start_index": 1, "role": "时间", "argument": "5月份"},  # offset wrong
        {"argument_start_index": 0, "role": "地点", "argument": "5月份"}]}  # role not of this type
    path = write_lines(tmp_path / "e.json", [
        {"text": text, "id": "a", "event_list": [good]},
        {"text": text, "id": "b", "event_list": [
            {"event_type": "组织关系-开除", "trigger": "裁员", "trigger_start_index": 5, "arguments": []},
            {"event_type": "组织关系-裁员", "trigger": "裁员", "trigger_start_index": 4, "arguments": []}]},
        {"text": text}])
    report = SkipReport()
    examples = read_duee(path, event_schema, report)
    assert [len(e.events) for e in examples] == [1, 0, 0]
    assert examples[0].events[0] == Event("组织关系-裁员", tuple(sorted([(TRIGGER, 5, 7), ("时间", 0, 2), ("裁员人数", 7, 12)])))
    assert examples[0].id == "a"
    assert report.counts() == {"argument offset does not match its text": 1, "role not in the schema": 1,
                               "event type not in the schema": 1, "trigger offset does not match its text": 1}
    assert sorted(w for w, _, _ in report.skipped) == [f"{path}:1"] * 2 + [f"{path}:2"] * 2


# ---- complex objects --------------------------------------------------------------------------


def test_complex_objects_become_links_from_the_value_and_back(relation_schema):
    spo_list = [{"subject": "张智尧", "predicate": "饰演", "object": {"@value": "楚留香", "inWork": "楚留香新传"}},
                {"subject": "张智尧", "predicate": "饰演", "object": {"@value": "展昭", "inWork": "包青天"}},
                {"subject": "楚留香新传", "predicate": "主演", "object": {"@value": "张智尧"}}]
    links = relation_links(spo_list, relation_schema)
    ids = {name: i for i, name in enumerate(relation_schema.link_names)}
    assert links == {("张智尧", ids["饰演"], "楚留香"), ("楚留香", ids["饰演_inWork"], "楚留香新传"),
                     ("张智尧", ids["饰演"], "展昭"), ("展昭", ids["饰演_inWork"], "包青天"),
                     ("楚留香新传", ids["主演"], "张智尧")}
    back = spo_from_links(links, relation_schema)
    assert sorted(map(spo_key, back)) == sorted(map(spo_key, spo_list))
    # a @value linked to two works: one spo, with the work nearest to the @value in the text
    text = "楚留香传奇拍完多年以后，张智尧在楚留香新传里饰演楚留香"
    value, near, far = (text.index(x) for x in ("楚留香", "楚留香新传", "楚留香传奇"))
    value = text.rindex("楚留香")
    triples = [(12, 15, ids["饰演"], value, value + 3), (value, value + 3, ids["饰演_inWork"], near, near + 5),
               (value, value + 3, ids["饰演_inWork"], far, far + 5)]
    assert spo_from_triples(text, triples, relation_schema) == [
        {"subject": "张智尧", "predicate": "饰演", "object": {"@value": "楚留香", "inWork": "楚留香新传"}}]
    written = spo_for_output(back, relation_schema)
    role = next(s for s in written if s["object"]["@value"] == "楚留香")
    assert role["object_type"] == {"@value": "人物", "inWork": "影视作品"} and role["subject_type"] == "娱乐人物"


# ---- round trip on every real sentence ----------------------------------------------------------


def perfect_scores(row, entity_types, link_types):
    """Scores a perfect model would give: +1 on the targets, -1 elsewhere."""
    length = len(row.input_ids)
    out = [torch.full((n, length, length), -1.0) for n in (entity_types, link_types, link_types)]
    for scores, targets in zip(out, (row.entities, row.heads, row.tails)):
        for t, i, j in targets:
            scores[t, i, j] = 1.0
    return out


# Sentences that cannot round-trip, and why (checked exactly, so a new failure or a fixed one shows):
DUIE_NO_ROUND_TRIP = {
    # 'Rafael Tol' ends inside the WordPiece 'toloi': no token span covers it
    "duie_train.json:593",
    # head/tail links are decoded independently: two subjects sharing a head token whose objects share a
    # tail token (超人前传第九季 / 超人前传第九季（Smallville Season 9）, 祯子 / 祯子内亲王, ...) add a crossed triple
    "duie_train.json:1684", "duie_train.json:3158", "duie_dev.json:594", "duie_dev.json:705",
    # one @value (锁部叶风) annotated in two works (蔷薇少女, 绝园) of one subject: reassembly keeps the nearest work
    "duie_train.json:873",
}
# DuEE: links are between positions, so one span holding two roles of one event type (塞浦路斯 胜者 of one
# event, 败者 of another) links both roles to both events and the cliques merge. All gold events are still
# recovered (recall 1.0); these sentences gain extra events.
DUEE_NO_ROUND_TRIP = {f"duee_dev.json:{n}" for n in (1247, 1255, 1256, 1269, 1282, 1295, 1315, 1334, 1349, 1369,
                                                        1379)}


@pytest.mark.slow  # minutes on a 2-core machine; CI runs it with -m slow
def test_duie_round_trip_on_every_real_sentence(extraction_dir, relation_schema, tokenizer):
    failed, gold, pred, skipped = set(), [], [], SkipReport()
    for split in ("train", "dev"):
        examples = read_duie(extraction_dir / "duie2.0_subset" / f"duie_{split}.json", relation_schema, skipped)
        assert len(examples) == {"train": 4000, "dev": 2000}[split]
        for ex, row in zip(examples, encode_relations(tokenizer, examples, relation_schema, 512, skipped)):
            triples = decode_relations(*perfect_scores(row, 2, len(relation_schema.links)), row.offsets)
            found = spo_from_triples(ex.text, triples, relation_schema)
            gold.append(ex.spo_list)
            pred.append(found)
            if {spo_key(s) for s in found} != {spo_key(s) for s in ex.spo_list}:
                failed.add(ex.where.rsplit("/", 1)[1])
    assert failed == DUIE_NO_ROUND_TRIP
    assert [(w.rsplit("/", 1)[1], r) for w, r, _ in skipped.skipped] == [
        ("duie_train.json:593", "entity not on token boundaries")]
    scores = scores_from_counts(relation_counts(gold, pred))
    assert scores["gold"] == 10877 and scores["f1"] > 0.999


@pytest.mark.slow  # minutes on a 2-core machine; CI runs it with -m slow
def test_duee_round_trip_on_every_real_sentence(extraction_dir, event_schema, tokenizer):
    skipped = SkipReport()
    examples = read_duee(extraction_dir / "duee1.0" / "duee_dev.json", event_schema, skipped)
    assert len(examples) == 1492 and sum(len(e.events) for e in examples) == 1783
    failed, gold, pred = set(), [], []
    for ex, row in zip(examples, encode_events(tokenizer, examples, event_schema, 512, skipped)):
        events = decode_events(*perfect_scores(row, len(event_schema.labels), 1), row.offsets, event_schema)
        gold.append(event_list_for_output(ex.text, ex.events, event_schema))
        pred.append(event_list_for_output(ex.text, events, event_schema))
        if sorted(map(event_key, gold[-1])) != sorted(map(event_key, pred[-1])):
            failed.add(ex.where.rsplit("/", 1)[1])
    assert len(skipped) == 0  # every argument is on token boundaries (after trimming edge spaces)
    assert failed == DUEE_NO_ROUND_TRIP
    events = scores_from_counts(event_counts(gold, pred), overall="event")
    arguments = scores_from_counts(event_counts(gold, pred), overall="argument")
    assert events["recall"] == 1.0 and arguments["f1"] == 1.0
    assert events["gold"] == 1752 and events["pred"] == 1782  # 1783 events, 31 repeat another's arguments


# ---- encoding details ----------------------------------------------------------------------------


def test_overlapping_triples_encode_and_decode(relation_schema, tokenizer):
    text = "周星驰导演并主演了《功夫》，周星驰是作者"
    spo_list = [{"subject": "功夫", "predicate": "导演", "object": {"@value": "周星驰"}},
                {"subject": "功夫", "predicate": "主演", "object": {"@value": "周星驰"}},
                {"subject": "功夫", "predicate": "编剧", "object": {"@value": "周星驰"}}]
    row = encode_relations(tokenizer, [RelationExample(text, spo_list)], relation_schema, 64)[0]
    assert row.entities == [(0, 11, 12), (1, 1, 3)]  # subject 功夫, object 周星驰 (first occurrence)
    assert len(row.heads) == len(row.tails) == 3
    triples = decode_relations(*perfect_scores(row, 2, len(relation_schema.links)), row.offsets)
    assert sorted(map(spo_key, spo_from_triples(text, triples, relation_schema))) == sorted(map(spo_key, spo_list))


def test_truncated_and_unaligned_spans_are_counted(relation_schema, event_schema, tokenizer):
    text = "《功夫》" + "很" * 40 + "的导演是周星驰"
    spo = [{"subject": "功夫", "predicate": "导演", "object": {"@value": "周星驰"}}]
    report = SkipReport()
    row = encode_relations(tokenizer, [RelationExample(text, spo, "x:1")], relation_schema, 16, report)[0]
    assert row.heads == [] and report.skipped == [("x:1", "entity past the truncation", "导演: '功夫' -> '周星驰'")]
    event = Event("组织关系-裁员", ((TRIGGER, 8, 10), ("时间", 2, 5), ("裁员方", 3, 6)))
    report = SkipReport()
    row = encode_events(tokenizer, [EventExample("甲骨Oracle裁员", [event], where="y:3")], event_schema, 32, report)[0]
    assert report.counts() == {"argument not on token boundaries": 2}  # 'Ora', 'rac' cut the WordPieces or ##ac
    assert row.entities == [(event_schema.labels.index(("组织关系-裁员", TRIGGER)), 6, 7)]


def test_collate_writes_sparse_targets(tokenizer, event_schema):
    text = "5月份在华裁员900余人"
    event = Event("组织关系-裁员", ((TRIGGER, 5, 7), ("时间", 0, 3)))
    rows = [r.as_row() for r in encode_events(tokenizer, [EventExample(text, [event]), EventExample("短", [])],
                                              event_schema, 32)]
    batch = collate(rows, tokenizer.pad_token_id, len(event_schema.labels), 1)
    length = batch["input_ids"].shape[1]
    assert batch["entity_labels"].shape == (2, len(event_schema.labels), 1)
    trigger = event_schema.labels.index(("组织关系-裁员", TRIGGER))
    first, last = rows[0]["entities"][[e[0] for e in rows[0]["entities"]].index(trigger)][1:]
    assert batch["entity_labels"][0, trigger, 0] == first * length + last
    assert (batch["entity_labels"][1] == -1).all() and (batch["head_labels"][1] == -1).all()
    head_cell = int(batch["head_labels"][0, 0, 0])
    assert rows[0]["heads"] == [(0, head_cell // length, head_cell % length)]
    assert batch["label_mask"][1].tolist()[:3] == [0, 1, 0]


# ---- decoding from hand-made scores ----------------------------------------------------------------


def test_relation_decoding_needs_both_links():
    offsets = [(0, 0)] + [(i, i + 1) for i in range(6)] + [(0, 0)]
    entity, head, tail = torch.full((2, 8, 8), -5.0), torch.full((2, 8, 8), -5.0), torch.full((2, 8, 8), -5.0)
    entity[0, 1, 2] = entity[0, 3, 3] = 1.0  # subjects: tokens 1-2, token 3
    entity[1, 5, 6] = 1.0  # object: tokens 5-6
    head[0, 1, 5] = tail[0, 2, 6] = 1.0  # (1-2) -p0-> (5-6): both links
    head[1, 1, 5] = tail[1, 2, 6] = 1.0  # and also -p1->: several predicates between one pair
    head[0, 3, 5] = 1.0  # (3) -p0-> (5-6): the head link only
    assert decode_relations(entity, head, tail, offsets) == [(0, 2, 0, 4, 6), (0, 2, 1, 4, 6)]
    entity[0, 0, 1] = 1.0  # a span touching [CLS] never maps to characters
    head[0, 0, 5] = tail[0, 1, 6] = 1.0
    assert decode_relations(entity, head, tail, offsets) == [(0, 2, 0, 4, 6), (0, 2, 1, 4, 6)]


def test_event_decoding_splits_events_that_share_an_argument(event_schema):
    # "A 在 T 击败 B ，C 击败 D": two 胜负 events that share the time argument T (token 3)
    offsets = [(0, 0)] + [(i, i + 1) for i in range(10)] + [(0, 0)]
    labels = {name: i for i, name in enumerate(event_schema.labels)}
    kind = "竞赛行为-胜负"
    nodes = {"t1": (labels[kind, TRIGGER], 4, 5), "w1": (labels[kind, "胜者"], 1, 1), "l1": (labels[kind, "败者"], 6, 6),
             "time": (labels[kind, "时间"], 3, 3), "t2": (labels[kind, TRIGGER], 9, 9), "w2": (labels[kind, "胜者"], 8, 8),
             "l2": (labels[kind, "败者"], 10, 10), "lone": (labels["人生-死亡", "死者"], 2, 2)}
    entity = torch.full((len(event_schema.labels), 12, 12), -3.0)
    head, tail = torch.full((1, 12, 12), -3.0), torch.full((1, 12, 12), -3.0)
    for label, i, j in nodes.values():
        entity[label, i, j] = 2.0
    for group in (("t1", "w1", "l1", "time"), ("t2", "w2", "l2", "time")):
        for a, b in itertools.combinations(group, 2):
            (_, h1, t1), (_, h2, t2) = nodes[a], nodes[b]
            head[0, min(h1, h2), max(h1, h2)] = tail[0, min(t1, t2), max(t1, t2)] = 1.0
    events = decode_events(entity, head, tail, offsets, event_schema)
    assert events == [Event(kind, tuple(sorted([(TRIGGER, 3, 5), ("时间", 2, 3), ("胜者", 0, 1), ("败者", 5, 6)]))),
                      Event(kind, tuple(sorted([(TRIGGER, 8, 9), ("时间", 2, 3), ("胜者", 7, 8), ("败者", 9, 10)])))]
    # the lone 死者 has no trigger: no 死亡 event


def test_untrained_scores_decode_in_bounded_time(event_schema):
    torch.manual_seed(0)
    length = 60
    offsets = [(0, 0)] + [(i, i + 1) for i in range(length - 2)] + [(0, 0)]
    entity = torch.randn(len(event_schema.labels), length, length)
    head, tail = torch.randn(1, length, length), torch.randn(1, length, length)
    events = decode_events(entity, head, tail, offsets, event_schema, max_spans=64)
    assert sum(len(e.arguments) for e in events) > 0
    triples = decode_relations(torch.randn(2, length, length), torch.randn(5, length, length),
                               torch.randn(5, length, length), offsets, max_spans=32)
    assert len(triples) <= 5 * 32 * 32


# ---- clique search -------------------------------------------------------------------------------


def brute_force_maximal_cliques(n, edges):
    cliques = [set(c) for k in range(1, n + 1) for c in itertools.combinations(range(n), k)
               if all((a, b) in edges for a, b in itertools.combinations(c, 2))]
    return sorted(tuple(sorted(c)) for c in cliques if not any(c < d for d in cliques))


def post_clique_search(nodes, linked):
    """The post's recursion (kexue.fm/archives/8926 ``clique_search``): split at each unlinked pair into the
    two nodes' neighbourhoods, recurse; a set with no unlinked pair is one event."""
    parts = []
    for a, b in itertools.combinations(nodes, 2):
        if not linked(a, b):
            for host in (a, b):
                part = sorted([host] + [x for x in nodes if x != host and linked(host, x)])
                if part not in parts:
                    parts.append(part)
    if not parts:
        return [tuple(sorted(nodes))]
    out = []
    for part in parts:
        for clique in post_clique_search(part, linked):
            if clique not in out:
                out.append(clique)
    return sorted(out)


@pytest.mark.parametrize("seed", range(60))
def test_maximal_cliques_match_brute_force_and_the_post(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 9)
    density = rng.choice([0.2, 0.5, 0.8])
    edges = set()
    for a, b in itertools.combinations(range(n), 2):
        if rng.random() < density:
            edges.update({(a, b), (b, a)})
    neighbours = [{b for b in range(n) if (a, b) in edges} for a in range(n)]
    expected = brute_force_maximal_cliques(n, edges)
    assert maximal_cliques(neighbours) == expected
    assert post_clique_search(list(range(n)), lambda a, b: (a, b) in edges) == expected


def test_maximal_cliques_edge_cases():
    assert maximal_cliques([]) == []
    assert maximal_cliques([set(), set()]) == [(0,), (1,)]
    assert maximal_cliques([{1}, {0, 2}, {1}]) == [(0, 1), (1, 2)]


# ---- metrics ---------------------------------------------------------------------------------------


def test_relation_metric_hand_computed():
    def spo(s, p, **obj):
        return {"subject": s, "predicate": p, "object": obj}

    gold = [[spo("A", "导演", **{"@value": "B"}), spo("A", "饰演", **{"@value": "C", "inWork": "W"})],
            [spo("D", "作者", **{"@value": "E"})]]
    pred = [[spo("A", "导演", **{"@value": "B "}),  # white space at the edge is not compared
             spo("A", "饰演", **{"@value": "C", "inWork": "X"})],  # one slot wrong: the triple is wrong
            [spo("D", "作者", **{"@value": "E"}), spo("D", "作者", **{"@value": "F"})]]
    scores = scores_from_counts(relation_counts(gold, pred))
    # tp 2 of gold 3, pred 4: P = 1/2, R = 2/3, F1 = 2 * (1/2)(2/3) / (1/2 + 2/3) = 4/7
    assert (scores["tp"], scores["gold"], scores["pred"]) == (2, 3, 4)
    assert scores["f1"] == pytest.approx(4 / 7)
    assert scores["per_type"]["饰演"]["tp"] == 0 and scores["per_type"]["作者"]["pred"] == 2


def test_event_metric_hand_computed():
    def event(kind, trigger, *arguments):
        return {"event_type": kind, "trigger": trigger, "trigger_start_index": 0,
                "arguments": [{"role": r, "argument": a, "argument_start_index": 0} for r, a in arguments]}

    gold = [[event("裁员", "裁员", ("裁员方", "甲骨文"), ("时间", "5月")), event("死亡", "去世", ("死者", "张三"))],
            [event("裁员", "裁员", ("裁员方", "IBM"))]]
    pred = [[event("裁员", "裁员", ("裁员方", "甲骨文")),  # one argument missing: the event is wrong
             event("死亡", "去世", ("死者", "张三"))],  # right
            [event("裁员", "裁掉", ("裁员方", "IBM"))]]  # wrong trigger: event wrong, argument right
    counts = event_counts(gold, pred)
    events = scores_from_counts(counts, overall="event")
    arguments = scores_from_counts(counts, overall="argument")
    assert (events["tp"], events["gold"], events["pred"]) == (1, 3, 3)
    assert events["f1"] == pytest.approx(1 / 3)
    # arguments: gold 4 (甲骨文, 5月, 张三, IBM), pred 3, all 3 right: P 1, R 3/4, F1 6/7
    assert (arguments["tp"], arguments["gold"], arguments["pred"]) == (3, 4, 3)
    assert arguments["f1"] == pytest.approx(6 / 7)
