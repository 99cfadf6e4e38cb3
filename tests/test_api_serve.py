"""``storyloom serve`` as a real process refuses to listen beyond loopback without an API key.

(Serving itself is covered in-process by the other API tests; a full ``storyloom serve`` start loads both
demo models, which takes most of a minute on a small CPU.)
"""

from __future__ import annotations

import os
import subprocess
import sys


def test_serve_beyond_loopback_without_a_key_is_refused_before_loading(tmp_path):
    data_dir = tmp_path / "data"
    env = {**os.environ, "STORYLOOM_DATA_DIR": str(data_dir), "STORYLOOM_CONFIG_DIR": str(tmp_path / "config")}
    command = [sys.executable, "-m", "storyloom", "serve", "--host", "0.0.0.0", "--port", "8765"]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode == 2
    assert "API key" in done.stderr and "0.0.0.0" in done.stderr
    assert not data_dir.exists() or not any(data_dir.rglob("*.safetensors"))
