"""Write the first N transformer blocks of a GGUF model, its embeddings, norm and tokenizer
unchanged, as a smaller GGUF (tensors copied as stored, not requantized).

    python3 benchmarks/notes/truncate_gguf.py SmolLM2-135M-Instruct.Q4_1.gguf out.gguf --blocks 8

Why: a device call carries at most 64 MiB, and SmolLM2's file is 98 MB; its first 8 of 30
blocks with the embeddings are 48 MB. A truncated model keeps real weights, real activation
statistics and real logit margins, so greedy decoding on it checks a cache path's exactness on a
GPU where random weights cannot (their margins flip on bf16 rounding).
"""

from __future__ import annotations

import argparse

from gguf import GGUFReader, GGUFValueType, GGUFWriter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--blocks", type=int, default=8)
    args = parser.parse_args()
    reader = GGUFReader(args.src)
    arch = reader.fields["general.architecture"].contents()
    writer = GGUFWriter(args.dst, arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        value = field.contents()
        if name == f"{arch}.block_count":
            value = args.blocks
        kind = field.types[0]
        if kind == GGUFValueType.ARRAY:
            writer.add_key_value(name, value, kind, sub_type=field.types[-1])
        else:
            writer.add_key_value(name, value, kind)
    for tensor in reader.tensors:
        if tensor.name.startswith("blk.") and int(tensor.name.split(".")[1]) >= args.blocks:
            continue
        writer.add_tensor(tensor.name, tensor.data, raw_shape=tensor.data.shape,
                          raw_dtype=tensor.tensor_type)  # fmt: skip
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    main()
