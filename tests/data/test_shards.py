"""lmtrain.data.shards: a shard plan whose cut points are found without reading the files; the test corpus."""

from __future__ import annotations

import csv
import gzip
import json
import random
from pathlib import Path

from lmtrain.data import shards as shards_mod
from lmtrain.data.readers import PIECE_BOUNDARY
from lmtrain.data.shards import find_boundary, plan_shards

# words and separators chosen to test the cut points: multi-byte characters, and whitespace that is
# not ASCII (no cut beside it) or not single (no cut inside it)
WORDS = ["the", "quick", "naïve", "café", "漢字", "🙂", "e\u0301", "x", "it's", "42", "—", "Ünïcödé", "z"]
SEPARATORS = [" "] * 12 + ["\n"] * 3 + ["  ", "\n\n", "\t", "\u00a0", " \n", "\u3000", "\x85", "\r\n", "\x1c"]


def prose(rng: random.Random, chars: int) -> str:
    out: list[str] = []
    n = 0
    while n < chars:
        w = rng.choice(WORDS) + rng.choice(SEPARATORS)
        out.append(w)
        n += len(w)
    return "".join(out)


def make_corpus(root: Path, seed: int = 0, scale: int = 1) -> list[Path]:
    """Every format the shards treat differently, with the cases their readers must get right."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    files = []

    def add(name: str) -> Path:
        files.append(root / name)
        return files[-1]

    add("a.txt").write_bytes(b"\xef\xbb\xbf" + prose(rng, 60_000 * scale).encode())  # a byte-order mark first
    records = []
    for i in range(300 * scale):
        r = rng.random()
        text = prose(rng, rng.choice([5, 40, 300])) if r > 0.1 else prose(rng, 5000) if r > 0.05 else ""
        records.append({"text": text if r > 0.02 else None, "id": i})
    lines = [json.dumps(rec, ensure_ascii=rng.random() < 0.5) for rec in records]
    body = "".join(line + rng.choice(["\n", "\n", "\r\n", "\n\n", "\n  \n"]) for line in lines)
    body = body.replace("\n", "\r", 1)  # one lone '\r' line end (a text stream splits lines there too)
    add("b.jsonl").write_bytes(b"\xef\xbb\xbf" + body.encode())
    with gzip.open(add("c.jsonl.gz"), "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps({"text": prose(rng, 200)}) + "\n" for _ in range(40 * scale)))
    with open(add("d.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        for i in range(30):
            w.writerow([i, prose(rng, 100) if i % 7 else ""])
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [prose(rng, 150) if i % 9 else (None if i % 2 else "") for i in range(60 * scale)]
    pq.write_table(pa.table({"text": texts}), add("e.parquet"), row_group_size=7)
    add("f.json").write_text(json.dumps([{"text": prose(rng, 80)} for _ in range(10)]), encoding="utf-8")
    add("g.json").write_text(
        "\n  \n" + "".join(json.dumps({"text": prose(rng, 120)}) + "\n" for _ in range(50)), encoding="utf-8"
    )
    with gzip.open(add("h.txt.gz"), "wt", encoding="utf-8") as f:
        f.write(prose(rng, 20_000))
    add("i.txt").write_text("short and no newline at the end", encoding="utf-8")
    import bz2
    import lzma

    import zstandard

    jsonl = "".join(json.dumps({"text": prose(rng, 90)}) + "\n" for _ in range(20)).encode()
    add("j.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(jsonl))
    add("k.txt.xz").write_bytes(lzma.compress(prose(rng, 3000).encode()))
    add("l.jsonl.bz2").write_bytes(bz2.compress(jsonl))
    return files


def test_text_cuts_are_piece_boundaries_found_without_reading_the_file(tmp_path, monkeypatch):
    path = tmp_path / "big.txt"
    text = prose(random.Random(4), 2_000_000)
    path.write_text(text, encoding="utf-8")
    data = path.read_bytes()
    read = []
    real_open = open

    class Counting:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def seek(self, n):
            return self.f.seek(n)

        def read(self, n=-1):
            out = self.f.read(n)
            read.append(len(out))
            return out

    monkeypatch.setattr(shards_mod, "open", lambda *a, **k: Counting(real_open(*a, **k)), raising=False)
    shards = plan_shards([path], target_bytes=100_000)
    monkeypatch.undo()
    assert len(shards) >= 15 and sum(read) < len(data) // 10  # a window per cut
    for s in shards[1:]:
        before, after = data[: s.start].decode(), data[s.start :].decode()
        whole = before + after
        assert PIECE_BOUNDARY.match(whole, len(before)), s  # the cut is a piece boundary of the text
    assert b"".join(data[s.start : s.end] for s in shards) == data


def test_find_boundary_looks_at_unicode_neighbours():
    assert find_boundary("a b".encode(), 0, 3) == 1
    assert find_boundary("a\u00a0 b c".encode(), 0, 8) == 5  # not beside a no-break space (at 3)
    assert find_boundary("漢 字".encode(), 0, 7) == 3
    assert find_boundary("a\x85 b".encode(), 0, 5) == -1  # NEL is whitespace to Python's \s
    assert find_boundary(b"\xff b", 0, 3) == -1  # invalid UTF-8 beside it: no cut
    assert find_boundary(b"\xef\xbb\xbf x", 0, 5) == -1  # the byte-order mark is dropped when decoding
    assert find_boundary("a 漢".encode()[:3], 0, 3) == -1  # its next character is cut off
