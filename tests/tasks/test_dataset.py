"""JSONL loading: ids, meta passthrough, and errors that point at file:line."""
import json

import pytest

from megatron_sgpo.tasks.dataset import TaskItem, load_jsonl, write_jsonl


def _write(tmp_path, lines):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_ids_default_to_line_index_and_extra_fields_go_to_meta(tmp_path):
    path = _write(tmp_path, [
        json.dumps({"prompt": "1+1=", "answer": "2"}),
        "",
        json.dumps({"prompt": "2+2=", "answer": 4, "level": 3}),
        json.dumps({"prompt": "3+3=", "answer": "6", "id": "six"}),
    ])
    items = load_jsonl(path)
    assert [it.id for it in items] == ["0", "2", "six"]  # the blank line 2 still counts
    assert items[1].answer == "4" and items[1].meta == {"level": 3}
    assert items[2] == TaskItem("six", "3+3=", "6", {})


def test_missing_answer_names_file_and_line(tmp_path):
    path = _write(tmp_path, [json.dumps({"prompt": "a", "answer": "1"}), json.dumps({"prompt": "b"})])
    with pytest.raises(ValueError, match=rf"^{path}:2: row has no 'answer' field"):
        load_jsonl(path)


def test_malformed_json_names_file_and_line(tmp_path):
    path = _write(tmp_path, [json.dumps({"prompt": "a", "answer": "1"}), "", '{"prompt": "b",'])
    with pytest.raises(ValueError, match=rf"^{path}:3: malformed JSON"):
        load_jsonl(path)


def test_duplicate_id_names_both_lines(tmp_path):
    path = _write(tmp_path, [json.dumps({"prompt": "a", "answer": "1", "id": "x"}),
                             json.dumps({"prompt": "b", "answer": "2", "id": "x"})])
    with pytest.raises(ValueError, match=rf"^{path}:2: duplicate id 'x' \(first seen at line 1\)"):
        load_jsonl(path)


def test_implicit_index_id_can_clash_with_explicit_id(tmp_path):
    path = _write(tmp_path, [json.dumps({"prompt": "a", "answer": "1", "id": "1"}),
                             json.dumps({"prompt": "b", "answer": "2"})])
    with pytest.raises(ValueError, match=":2: duplicate id '1'"):
        load_jsonl(path)


def test_write_then_load_round_trips(tmp_path):
    items = [TaskItem("a", "p\nq", "7", {"level": 2, "task": "arith"}), TaskItem("b", "ü", "x", {})]
    assert write_jsonl(items, tmp_path / "sub" / "out.jsonl") == 2
    assert load_jsonl(tmp_path / "sub" / "out.jsonl") == items
