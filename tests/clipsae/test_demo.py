def test_demo_writes_shards_extracts_and_summarises(tmp_path, run_cli):
    code, out, err = run_cli("demo", "--out", tmp_path / "demo", "--n-images", "12")
    assert code == 0, err
    assert "wrote 12 synthetic images" in out
    assert "images     12  (12 labelled" in out
    assert "resid.10     (12, 50, 768)" in out
