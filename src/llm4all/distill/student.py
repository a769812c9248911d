"""``llm4all models init-student``: initialise a student from a teacher and save it, untrained.

The library behind it is ``llm4all.models.init`` (which layers, heads and width the student
keeps, and how its weights come from the teacher's); this command adds the calibration text
that a narrower width's PCA basis may be computed on, and writes the student as an HF
directory that ``distill --student`` or ``train --model`` then trains.
"""

from __future__ import annotations

from pathlib import Path

import torch

from llm4all.errors import UserError
from llm4all.models.init import select_layers, student_from_teacher


def init_student(teacher: str, *, out: Path, every: int | None = None, layers: list[int] | None = None,
                 hidden_size: int | None = None, intermediate_size: int | None = None,
                 num_attention_heads: int | None = None, num_key_value_heads: int | None = None,
                 calibration: Path | None = None, calibration_tokens: int = 2048,
                 dtype: str = "float32", device: str = "auto") -> dict:
    """Initialise a student from a teacher and write it as an HF directory (with its tokenizer).

    Args:
        teacher: a registered name (smollm2-135m), an HF directory or a .gguf file.
        out: the student's directory (safetensors, config, the teacher's tokenizer, llm4all.json).
        every: keep teacher layers 0, every, 2·every, ... (default 2 unless --layers is given).
        layers: teacher layer indices to keep, e.g. 0 2 4 7 9 11.
        hidden_size: a narrower width: project the residual stream on its top PCA directions.
        intermediate_size: MLP width (default: the teacher's ratio to the hidden size).
        num_attention_heads: query heads to keep (default: the teacher's ratio, 64-dim heads kept).
        num_key_value_heads: KV heads to keep (default: the fewest that fit the teacher's groups).
        calibration: documents (jsonl/parquet/text) whose residual-stream PCA gives the basis;
            default: the teacher's embedding rows.
        calibration_tokens: tokens of --calibration to use (in rows of 256).
        dtype: float32, bfloat16 or float16.
        device: where the teacher's calibration forward runs: auto (CUDA when present, else CPU),
            cpu, cuda or cuda:N.
    """
    import time

    from llm4all.models.device import resolve_device
    from llm4all.models.load import load, resolve
    from llm4all.models.presets import count_parameters
    from llm4all.models.quiet import quiet_transformers
    from llm4all.runs import atomic_dir, write_manifest

    start = time.perf_counter()
    model, tokenizer = load(teacher, dtype=dtype, device=str(resolve_device(device)))
    ids = None
    if calibration is not None:
        from llm4all.data.readers import read_documents

        tokens: list[int] = []
        for doc in read_documents(calibration):
            tokens += tokenizer(doc.text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            if len(tokens) >= calibration_tokens:
                break
        rows = min(len(tokens), calibration_tokens) // 256
        if rows == 0:
            raise UserError(f"{calibration}: need at least 256 tokens of calibration text, got {len(tokens)}")
        ids = torch.tensor(tokens[:rows * 256]).reshape(rows, 256)
    student = student_from_teacher(model, layers=layers, every=every, hidden_size=hidden_size,
                                   intermediate_size=intermediate_size, calibration_ids=ids,
                                   num_attention_heads=num_attention_heads,
                                   num_key_value_heads=num_key_value_heads)
    c = student.config
    kept = select_layers(model.config.num_hidden_layers, layers, every)
    result = {"teacher": str(teacher), "teacher_path": str(resolve(teacher)), "layers": kept,
              "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
              "num_attention_heads": c.num_attention_heads, "num_key_value_heads": c.num_key_value_heads,
              "basis": "none" if c.hidden_size == model.config.hidden_size else
              ("calibration PCA" if ids is not None else "embedding PCA"),
              "calibration": str(calibration) if calibration else None,
              "teacher_params": count_parameters(model.config)["total"],
              "student_params": count_parameters(c)["total"]}

    with atomic_dir(out) as tmp, quiet_transformers():
        student.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_manifest(tmp, "models init-student", init_student=result,
                       seconds=round(time.perf_counter() - start, 1), inputs={"teacher": str(teacher)},
                       models=[{"path": ".", "role": "student", "format": "hf",
                                "source": f"student of {teacher}"}])
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"student of {teacher} -> {out}", show_header=False)
    for k, v in result.items():
        table.add_row(k, f"{v / 1e6:.1f}M" if k.endswith("params") else str(v))
    Console().print(table)
    return result
