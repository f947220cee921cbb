"""One .txt corpus written as other input formats, for bench/prep.py: .jsonl, .jsonl.zst and parquet shards.

The text is cut into documents of ``LINES_PER_DOC`` lines (newlines kept), so the
documents of every variant join back to exactly the .txt's text.
"""

from __future__ import annotations

import json
import os

LINES_PER_DOC = 100


def documents(txt_path: str) -> list[str]:
    with open(txt_path, encoding="utf-8") as f:
        lines = f.readlines()
    return ["".join(lines[i : i + LINES_PER_DOC]) for i in range(0, len(lines), LINES_PER_DOC)]


def write_formats(txt_path: str, out_dir: str, shards: int, row_groups: int) -> dict:
    """Write the variants under ``out_dir``; returns their paths and sizes on disk."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    docs = documents(txt_path)
    os.makedirs(out_dir, exist_ok=True)
    jsonl = os.path.join(out_dir, "corpus.jsonl")
    with open(jsonl, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
    zst = jsonl + ".zst"
    with open(jsonl, "rb") as src, open(zst, "wb") as dst:
        zstandard.ZstdCompressor(level=3).copy_stream(src, dst)  # zstd's default level
    parquet = os.path.join(out_dir, "parquet")
    os.makedirs(parquet, exist_ok=True)
    per_shard = -(-len(docs) // shards)
    for s in range(shards):
        part = docs[s * per_shard : (s + 1) * per_shard]
        name = os.path.join(parquet, f"train-{s:05d}-of-{shards:05d}.parquet")
        # pyarrow's default codec (snappy), as datasets writes its shards
        pq.write_table(pa.table({"text": part}), name, row_group_size=max(1, -(-len(part) // row_groups)))
    sizes = {
        "txt": os.path.getsize(txt_path),
        "jsonl": os.path.getsize(jsonl),
        "jsonl.zst": os.path.getsize(zst),
        "parquet": sum(os.path.getsize(os.path.join(parquet, n)) for n in os.listdir(parquet)),
    }
    return {"documents": len(docs), "paths": {"jsonl": jsonl, "jsonl.zst": zst, "parquet": parquet}, "sizes": sizes}
