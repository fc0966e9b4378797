import numpy as np
import pytest

from sama_agent.errors import VideoError
from sama_agent.video import Video


def test_decodes_a_real_mp4(mp4_video):
    path, written = mp4_video
    video = Video(path)
    assert (video.num_frames, video.height, video.width) == (20, 48, 64)
    assert video.fps == pytest.approx(10.0)
    assert video.duration == pytest.approx(2.0)
    frames = video.frames([0, 7, 19])
    assert frames.shape == (3, 48, 64, 3) and frames.dtype == np.uint8
    # lossy codec: close to what was written, and RGB order kept (band is blue)
    assert np.abs(frames.astype(int) - written[[0, 7, 19]].astype(int)).mean() < 12
    assert frames[0, :4, 30:, 2].mean() > frames[0, :4, 30:, 0].mean() + 100


def test_reads_a_frame_folder_exactly_in_natural_order(frame_folder):
    folder, written = frame_folder
    video = Video(folder, fps=5)
    assert video.num_frames == 6 and video.size == (20, 30)
    np.testing.assert_array_equal(video.frames(range(6)), written)
    assert video.timestamp(5) == pytest.approx(1.0)


def test_frame_folder_with_named_stems(frame_folder):
    folder, written = frame_folder
    video = Video(folder, frames=["3", "1"])
    np.testing.assert_array_equal(video.frame(0), written[3])
    with pytest.raises(VideoError, match="frame '9' is missing"):
        Video(folder, frames=["1", "9"])


def test_sampling_by_count_stride_and_seconds(mp4_video):
    video = Video(mp4_video[0])
    assert video.sample(4) == [2, 7, 12, 17]
    assert video.sample(100) == list(range(20))
    assert video.sample(stride=6) == [0, 6, 12, 18]
    assert video.sample(seconds=0.5) == [0, 5, 10, 15]
    assert video.index_at(1.05) == 10
    with pytest.raises(ValueError):
        video.sample(3, stride=2)


def test_streaming_yields_every_frame_in_order(mp4_video):
    video = Video(mp4_video[0])
    indices = [i for i, frame in video.iter_frames(batch=3)]
    assert indices == list(range(20))


def test_frame_index_out_of_range_is_explained(mp4_video):
    video = Video(mp4_video[0])
    with pytest.raises(VideoError, match=r"frame index 20 is out of range; this video has frames 0 to 19"):
        video.frame(20)
    with pytest.raises(VideoError, match="outside the video"):
        video.index_at(5.0)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty"),
        (b"just some notes\nnot a video\n" * 20, "text file"),
        (bytes(range(256)) * 8, "not a readable video"),
    ],
)
def test_bad_files_get_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoError, match=message) as info:
        Video(path)
    assert str(path) in str(info.value)


def test_truncated_file_is_refused(mp4_video, tmp_path):
    data = mp4_video[0].read_bytes()
    for cut in (len(data) // 2, len(data) - 300):
        path = tmp_path / f"cut{cut}.mp4"
        path.write_bytes(data[:cut])
        with pytest.raises(VideoError) as info:
            Video(path)
        assert str(path) in str(info.value) and "truncated" in str(info.value)


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(VideoError, match="no such file"):
        Video(tmp_path / "nope.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoError, match="no frame images"):
        Video(tmp_path / "empty")


def test_frame_of_another_size_in_folder(frame_folder):
    from PIL import Image

    folder, _ = frame_folder
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(folder / "7.png")
    video = Video(folder)
    with pytest.raises(VideoError, match="one size"):
        video.frame(6)
