"""Runs one command's main in this process for several argument lists, as a user would run the
command (through experiments.common.run), and prints one JSON line per run: its exit status and
what it wrote on stdout and stderr (captured at the file descriptors, so that library and C
output is caught too).

  python -m tests.command_rows experiments.predict < rows.json   # rows: a JSON list of argv lists

One process per command: the command's flags are defined once, and each run starts from their
defaults (FLAGS.unparse_flags).
"""
import importlib
import json
import os
import sys
import tempfile

from absl import flags

from experiments import common


def _run_captured(main, argv) -> dict:
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        status = 0
        try:
            common.run(main, argv=argv)
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException as e:  # noqa: BLE001 - a crash: its traceback is what the row reports
            import traceback

            traceback.print_exc()
            status = f"raised {type(e).__name__}"
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        out.seek(0)
        err.seek(0)
        return {"status": status, "stdout": out.read().decode(errors="replace"),
                "stderr": err.read().decode(errors="replace")}


def main():
    module = importlib.import_module(sys.argv[1])
    for args in json.load(sys.stdin):
        flags.FLAGS.unparse_flags()
        result = _run_captured(module.main, [sys.argv[1], *args])
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
