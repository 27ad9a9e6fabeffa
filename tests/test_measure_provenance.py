import json
import time

from sdpalab.measure.provenance import provenance

KEYS = {
    "python",
    "torch",
    "triton",
    "cuda",
    "cudnn",
    "driver",
    "device",
    "device_name",
    "cpu_model",
    "torch_threads",
    "git_sha",
    "git_dirty",
    "time_utc",
    "argv",
    "seed",
    "hostname",
}


def test_keys_present_fast_and_serializable():
    provenance()  # first call reads what is cached for the process
    start = time.perf_counter()
    p = provenance("cpu", argv=["sdpalab", "demo"], seed=7)
    assert time.perf_counter() - start < 0.5
    assert p.keys() >= KEYS
    assert p["argv"] == ["sdpalab", "demo"] and p["seed"] == 7
    assert p["torch"] and p["python"] and p["cpu_model"] and p["time_utc"].endswith("+00:00")
    assert isinstance(p["torch_threads"], int)
    json.dumps(p)


def test_never_raises_on_an_odd_device():
    p = provenance("no-such-device")
    assert p["device"] == "no-such-device" and p["device_name"] is None
