import numpy as np
import pytest

from sama_agent.errors import RegionError
from sama_agent.masks import MaskStore, MaskTrack
from sama_agent.regions import Region, parse_question, parse_region


def test_question_regions_become_placeholders():
    text, regions = parse_question("What is <region frame=12 box=40,30,120,200> doing near <region points=+5,6;-7,8>?")
    assert text == "What is <mask> doing near <mask>?"
    assert regions[0].frame == 12 and regions[0].box == (40, 30, 120, 200)
    assert regions[1].frame == 0 and regions[1].points == ((5, 6), (7, 8)) and regions[1].labels == (1, 0)
    assert regions[0].kinds == {"box"} and regions[1].kinds == {"points"}


def test_round_trip_through_text():
    region = parse_region("<region frame=3 box=1,2,3.5,4 points=+1,1;-2,2 mask=mask-0123456789ab>")
    assert parse_region(region.to_text()).to_text() == region.to_text()
    assert region.kinds == {"box", "points", "mask"}


@pytest.mark.parametrize(
    "text, message, marked",
    [
        ("what <region frame=2 box=1,2,3>", "box needs 4 numbers", "box=1,2,3"),
        ("what <region frame=x box=1,2,3,4>", "frame must be a non-negative whole number", "frame=x"),
        ("what <region size=4 box=1,2,3,4>", "unknown field 'size=4'", "size=4"),
        ("what <region frame=1 box=1,2,3,4 box=1,2,3,4>", "given twice", "box=1,2,3,4"),
        ("what <region frame=1 points=1>", "each point is x,y", "points=1"),
        ("what <region frame=1>", "needs box=, points= or mask=", "frame=1"),
        ("what <region frame=1 box=1,2,3,4", "not closed", "<region"),
    ],
)
def test_bad_syntax_points_at_the_bad_part(text, message, marked):
    with pytest.raises(RegionError, match=message) as info:
        parse_question(text)
    lines = str(info.value).splitlines()
    caret = lines[2]
    start = caret.index("^")
    assert lines[1].strip() == text
    assert lines[1][start:].startswith(marked)


def test_validation_against_the_video():
    Region(frame=2, box=(0, 0, 64, 48)).validate(48, 64, 10)
    with pytest.raises(RegionError, match="outside the 64x48 frame"):
        Region(frame=2, box=(10, 10, 80, 20)).validate(48, 64, 10)
    with pytest.raises(RegionError, match="frame 10 is out of range"):
        Region(frame=10, box=(1, 1, 5, 5)).validate(48, 64, 10)
    with pytest.raises(RegionError, match=r"point \(70,3\) lies outside"):
        Region(frame=0, points=((70, 3),), labels=(1,)).validate(48, 64, 10)
    with pytest.raises(RegionError, match="x0 < x1"):
        Region(frame=0, box=(20, 1, 10, 5)).validate(48, 64, 10)
    with pytest.raises(RegionError, match="empty"):
        Region(frame=0, mask=np.zeros((48, 64), bool)).validate(48, 64, 10)


def test_mask_reference_resolves_through_the_store(tmp_path):
    mask = np.zeros((48, 64), bool)
    mask[5:9, 10:20] = True
    store = MaskStore(tmp_path / "s")
    handle = store.add(MaskTrack.from_masks({4: mask, 5: mask}))
    region = parse_region(f"<region frame=4 mask={handle}>").resolve(store)
    np.testing.assert_array_equal(region.mask, mask)
    assert region.box_or_mask_box() == (10, 5, 20, 9)
    with pytest.raises(RegionError, match="no mask on frame 7"):
        parse_region(f"<region frame=7 mask={handle}>").resolve(store)


def test_mask_reference_from_png(tmp_path):
    from PIL import Image

    mask = np.zeros((10, 12), np.uint8)
    mask[2:4, 3:6] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    region = parse_region(f"<region frame=0 mask={tmp_path / 'm.png'}>").resolve()
    assert region.mask.sum() == 6
    with pytest.raises(RegionError, match="does not exist"):
        parse_region(f"<region frame=0 mask={tmp_path / 'x.png'}>").resolve()
