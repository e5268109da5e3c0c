"""Generate Python modules from the .proto files beside this script.

    python -m flight_server.proto.generate           # write flight_server/generated/
    python -m flight_server.proto.generate --check   # fail if the committed code is stale
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from importlib.resources import files
from pathlib import Path

from grpc_tools import protoc

PROTO_DIR = Path(__file__).resolve().parent
GENERATED_DIR = PROTO_DIR.parent / "generated"
PROTOS = ("Flight.proto", "FlightSql.proto")


def generate(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    include = str(files("grpc_tools").joinpath("_proto"))
    for proto in PROTOS:
        code = protoc.main([
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            str(PROTO_DIR / proto),
        ])
        if code != 0:
            raise SystemExit(f"protoc failed on {proto} (exit {code})")
    init = out_dir / "__init__.py"
    init.write_text("")
    return sorted(out_dir.glob("*.py*"))


def stale_files() -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = []
        for path in fresh:
            committed = GENERATED_DIR / path.name
            if not committed.exists() or not filecmp.cmp(path, committed, shallow=False):
                stale.append(path.name)
        return stale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    args = parser.parse_args()
    if args.check:
        stale = stale_files()
        if stale:
            names = ", ".join(stale)
            sys.exit(f"generated protocol code is stale ({names}): run make proto")
        print("generated protocol code is up to date")
        return
    for path in generate(GENERATED_DIR):
        print(f"wrote {path.relative_to(PROTO_DIR.parent.parent)}")


if __name__ == "__main__":
    main()
