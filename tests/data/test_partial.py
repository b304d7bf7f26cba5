from lmsuite.data.partial import PartialBuild


def test_a_partial_build_is_resumed_only_with_the_same_identity(tmp_path):
    folder = tmp_path / ".build"
    first = PartialBuild.open(folder, {"params": {"seed": 1}})
    (folder / "tokenizer.json").write_text("{}")
    first.save(count=10, tokenizer=True)
    again = PartialBuild.open(folder, {"params": {"seed": 1}})
    assert again.get("count") == 10 and (folder / "tokenizer.json").is_file()
    other = PartialBuild.open(folder, {"params": {"seed": 2}})  # other settings: afresh
    assert other.get("count") is None and not (folder / "tokenizer.json").exists()
    other.save(count=3)
    assert PartialBuild.open(folder, {"params": {"seed": 2}}, fresh=True).get("count") is None


def test_a_torn_record_starts_the_build_afresh(tmp_path):
    folder = tmp_path / ".build"
    PartialBuild.open(folder, {"params": {}}).save(count=10)
    (folder / "partial.json").write_text('{"identity": {"par')
    assert PartialBuild.open(folder, {"params": {}}).get("count") is None
