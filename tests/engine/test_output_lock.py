"""One training per OUTPUT_DIR, and a killed training never leaves the folder locked."""
import os
import signal
import subprocess
import sys
import time

import pytest

from mutualnet_det.engine.output_lock import OutputDirBusy, training_lock

HOLDER = """
import sys, time
from mutualnet_det.engine.output_lock import training_lock
with training_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_second_training_is_refused_naming_the_first_and_a_killed_one_frees_the_folder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputDirBusy, match=rf"in use by a running training \(pid {holder.pid} on "):
            with training_lock(str(tmp_path)):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)  # as kill -9: no clean-up runs
        holder.wait()
    with training_lock(str(tmp_path)) as path:  # the kernel released the dead process's lock
        assert open(path).read().startswith(f"pid {os.getpid()} ")
    with training_lock(str(tmp_path)):  # and the lock is released after the block
        pass
