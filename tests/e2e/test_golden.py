"""Same behaviour, bit for bit: the six golden runs of tests/golden.py give the recorded weights and metrics.

The values in tests/data/golden.json (one record per CPU instruction set: tests/golden.py) must
survive every refactoring. A change that is meant to change the weights re-records them on purpose
(`python tests/golden.py record`) and says so in its commit message.
"""

import pytest

import golden


@pytest.mark.golden
@pytest.mark.parametrize("name", list(golden.RUNS))
def test_a_golden_run_gives_the_recorded_weights_and_metrics(name, tmp_path):
    if not (golden.SHARED / "mr" / "train.csv").is_file():
        pytest.skip(f"needs the benchmark datasets in {golden.SHARED} (set TEXTPIPE_DATASETS; present in the project's CI, not in a user's clone)")
    records = golden.recorded()
    if records is None:
        pytest.skip(f"no golden record for this CPU's kernels ({golden.capability()}): tests/golden.py says how to record one")
    recorded = records[name]
    found = golden.run_one(name, tmp_path)
    assert found["metrics"] == recorded["metrics"]
    assert found["weights_sha256"] == recorded["weights_sha256"]
