"""Job functions for the backend tests: importable by worker processes, each run leaves a mark."""
import os


def marked(marker: str, value: int) -> dict:
    """Appends this process's id to `marker` (one line per run), returns the value squared."""
    with open(marker, "a") as f:
        f.write(f"{os.getpid()}\n")
    return {"value": value * value}


def failing(marker: str) -> dict:
    with open(marker, "a") as f:
        f.write("failed\n")
    raise RuntimeError("this job fails")


def execute_in_subprocess(key: str, marker: str, value: int) -> None:
    """Entry point of a second process that runs the same job on the same cache."""
    from flexmerge_core.backend.jobs import Job, execute

    print(execute(Job(key, marked, (marker, value))).computed)


if __name__ == "__main__":
    import sys

    execute_in_subprocess(sys.argv[1], sys.argv[2], int(sys.argv[3]))
