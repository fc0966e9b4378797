import json
import subprocess
import sys


def sama(*args):
    return subprocess.run([sys.executable, "-m", "sama_agent.cli", *args], capture_output=True, text=True)


def test_info_reports_frames_fps_size_and_duration(mp4_video):
    result = sama("info", str(mp4_video[0]), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "path": str(mp4_video[0]),
        "frames": 20,
        "fps": 10.0,
        "width": 64,
        "height": 48,
        "duration_s": 2.0,
    }


def test_info_on_a_frame_folder(frame_folder):
    result = sama("info", str(frame_folder[0]), "--fps", "2")
    assert result.returncode == 0
    assert "frames      6" in result.stdout and "duration_s  3.0" in result.stdout


def test_info_on_a_broken_file_is_a_clear_error_not_a_traceback(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("not a video at all\n")
    result = sama("info", str(path))
    assert result.returncode == 2
    assert f"error: {path}: this is a text file, not a video" in result.stderr
    assert "Traceback" not in result.stderr
