"""One training per OUTPUT_DIR: two runs writing the same checkpoints and `last_checkpoint`
would leave a folder that neither can resume from."""
import contextlib
import datetime
import fcntl
import os
import socket

LOCK_NAME = ".training.lock"


class OutputDirBusy(ValueError):
    pass


@contextlib.contextmanager
def training_lock(output_dir: str):
    """Hold an exclusive lock on `output_dir` for the block, or raise OutputDirBusy naming the
    process that holds it. The lock is the kernel's (flock): a killed run releases it with its
    last file descriptor, so it is never left stuck; the file only says who holds it."""
    try:
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, LOCK_NAME)
        lock_file = open(path, "a+")
    except OSError as err:
        raise ValueError(f"OUTPUT_DIR {output_dir!r} cannot be created or written ({err.strerror}): "
                         "give a folder this process can write") from None
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.seek(0)
        holder = lock_file.read().strip() or "another process"
        lock_file.close()
        raise OutputDirBusy(f"OUTPUT_DIR {output_dir!r} is in use by a running training ({holder}); wait for "
                            "it, stop it, or give this run another OUTPUT_DIR") from None
    try:
        lock_file.seek(0)
        lock_file.truncate()
        started = datetime.datetime.now().isoformat(timespec="seconds")
        lock_file.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n")
        lock_file.flush()
        yield path
    finally:
        fcntl.flock(lock_file, fcntl.LOCK_UN)
        lock_file.close()
