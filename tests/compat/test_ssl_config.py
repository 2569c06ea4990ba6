"""TF Serving's SSLConfig file (``--ssl_config_file``): read and checked before any port binds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compat.errors import InvalidArgument
from compat.text_configs import Tls, read_ssl_config
from tests.pki import Pki, make_pki


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


def write(tmp_path: Path, **fields: object) -> Path:
    path = tmp_path / "ssl.config"
    path.write_text(
        "\n".join(
            f"{k}: {str(v).lower() if isinstance(v, bool) else json.dumps(v)}"
            for k, v in fields.items()
        )
    )
    return path


def test_a_full_config_reads_back(pki: Pki, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        server_key=pki.server.key,
        server_cert=pki.server.cert,
        custom_ca=pki.ca,
        client_verify=True,
    )
    assert read_ssl_config(path) == Tls(pki.server.key, pki.server.cert, pki.ca, True)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"server_cert": "cert"}, "needs both server_key and server_cert"),
        ({"server_key": "key", "server_cert": "cert"}, "are no PEM key and certificate"),
        ({"key": "client", "cert": "server"}, "are no PEM key and certificate that belong"),
        (
            {"key": "server", "cert": "server", "client_verify": True},
            "client_verify needs custom_ca",
        ),
        ({"key": "server", "cert": "server", "custom_ca": "x"}, "custom_ca is no PEM certificate"),
    ],
)
def test_what_would_fail_a_handshake_fails_startup(
    pki: Pki, tmp_path: Path, fields: dict[str, object], message: str
) -> None:
    pems = {"server": pki.server, "client": pki.client}
    if "key" in fields:
        fields = {
            "server_key": pems[str(fields.pop("key"))].key,
            "server_cert": pems[str(fields.pop("cert"))].cert,
            **fields,
        }
    with pytest.raises(InvalidArgument) as e:
        read_ssl_config(write(tmp_path, **fields))
    assert message in e.value.message


def test_a_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ssl.config"
    path.write_text("server_key: 'a\nnonsense {")
    with pytest.raises(InvalidArgument) as e:
        read_ssl_config(path)
    assert e.value.message.startswith(f"Invalid protobuf file: '{path}'")
