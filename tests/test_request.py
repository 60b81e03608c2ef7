"""masque.request: the extended CONNECT request (RFC 9484 §4.4, RFC 9220, RFC 9297 §3.4)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from masque.errors import RequestError, TemplateError
from masque.request import (
    CONNECT_IP_PROTOCOL,
    ConnectIpRequest,
    Headers,
    build_connect_ip_headers,
    build_connect_ip_response_headers,
    parse_capsule_protocol,
    validate_connect_ip_request,
)
from masque.template import TARGET_ANY, Scope, TargetHostname, TargetPrefix, UriTemplate
from tests.test_template import FULL_TEMPLATES, scopes

TEMPLATE = UriTemplate.parse("https://example.org/.well-known/masque/ip/{target}/{ipproto}/")

# RFC 9484 Figure 4, the request for an unscoped tunnel.
FIGURE_4: Headers = [
    (b":method", b"CONNECT"),
    (b":protocol", b"connect-ip"),
    (b":scheme", b"https"),
    (b":path", b"/.well-known/masque/ip/*/*/"),
    (b":authority", b"example.org"),
    (b"capsule-protocol", b"?1"),
]


def base() -> Headers:
    return build_connect_ip_headers(TEMPLATE, "192.0.2.0/24", 6, authorization="Bearer t0ken")


# ------------------------------------------------------------------- client side


def test_build_exact_header_list() -> None:
    assert build_connect_ip_headers(TEMPLATE) == [
        (b":method", b"CONNECT"),
        (b":protocol", b"connect-ip"),
        (b":scheme", b"https"),
        (b":authority", b"example.org"),
        (b":path", b"/.well-known/masque/ip/*/*/"),
        (b"capsule-protocol", b"?1"),
    ]


def test_build_with_scope_authority_authorization_and_extras() -> None:
    headers = build_connect_ip_headers(
        TEMPLATE.text,
        ipaddress.ip_network("2001:db8::/32"),
        17,
        authority="example.org:4433",
        authorization="Bearer abc.def",
        extra_headers=[(b"user-agent", b"masque-relay/0.1")],
    )
    assert headers == [
        (b":method", b"CONNECT"),
        (b":protocol", b"connect-ip"),
        (b":scheme", b"https"),
        (b":authority", b"example.org:4433"),
        (b":path", b"/.well-known/masque/ip/2001%3Adb8%3A%3A%2F32/17/"),
        (b"capsule-protocol", b"?1"),
        (b"authorization", b"Bearer abc.def"),
        (b"user-agent", b"masque-relay/0.1"),
    ]


def test_build_from_expanded_uri() -> None:
    # A URI with no variables is a fixed template: the path goes out unchanged.
    uri = "https://relay.example:4433/.well-known/masque/ip/192.0.2.0%2F24/6/"
    headers = dict(build_connect_ip_headers(uri))
    assert headers[b":path"] == b"/.well-known/masque/ip/192.0.2.0%2F24/6/"
    assert headers[b":authority"] == b"relay.example:4433"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"authorization": "Bearer x\r\nx-injected: 1"}, ValueError),
        ({"authorization": "Bearer \u00e9"}, ValueError),
        ({"authorization": " Bearer x"}, ValueError),
        ({"authority": "user@example.org"}, ValueError),
        ({"authority": "example.org\r\n"}, ValueError),
        ({"authority": "example.org:0"}, ValueError),
        ({"extra_headers": [(b"User-Agent", b"x")]}, ValueError),
        ({"extra_headers": [(b":path", b"/x")]}, ValueError),
        ({"extra_headers": [(b"capsule-protocol", b"?0")]}, ValueError),
        ({"extra_headers": [(b"authorization", b"x")]}, ValueError),
        ({"extra_headers": [(b"content-length", b"0")]}, ValueError),
        ({"extra_headers": [(b"connection", b"close")]}, ValueError),
        ({"extra_headers": [(b"x-a", b"b\nc")]}, ValueError),
        ({"extra_headers": [("x-a", "b")]}, TypeError),
        ({"target": "192.0.2.1/24"}, ValueError),
        ({"ipproto": 300}, ValueError),
    ],
)
def test_build_rejects(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        build_connect_ip_headers(TEMPLATE, **kwargs)  # type: ignore[arg-type]


def test_build_rejects_bad_template_and_unexpressible_scope() -> None:
    with pytest.raises(TemplateError):
        build_connect_ip_headers("https://example.org/{+target}")
    with pytest.raises(ValueError, match="no 'target' variable"):
        build_connect_ip_headers("https://example.org/fixed", "192.0.2.0/24")


# -------------------------------------------------------------------- relay side


def test_validate_rfc_figure_4() -> None:
    req = validate_connect_ip_request(FIGURE_4, TEMPLATE)
    assert req == ConnectIpRequest(
        scope=Scope(),
        authority="example.org",
        path="/.well-known/masque/ip/*/*/",
        authorization=None,
        capsule_protocol=True,
        headers=tuple(FIGURE_4),
    )


def test_validate_rfc_figure_20_query_template() -> None:
    # RFC 9484 §8.3: an SCTP flow to a hostname through a query-style template.
    tpl = UriTemplate.parse("https://proxy.example.com/proxy{?target,ipproto}")
    headers: Headers = [
        (b":method", b"CONNECT"),
        (b":protocol", b"connect-ip"),
        (b":scheme", b"https"),
        (b":path", b"/proxy?target=target.example.com&ipproto=132"),
        (b":authority", b"proxy.example.com"),
        (b"capsule-protocol", b"?1"),
    ]
    req = validate_connect_ip_request(headers, tpl)
    assert req.scope == Scope(TargetHostname("target.example.com"), 132)


def test_validate_built_request() -> None:
    req = validate_connect_ip_request(base(), TEMPLATE, authorities=["example.org"])
    assert req.scope == Scope(TargetPrefix(ipaddress.ip_network("192.0.2.0/24")), 6)
    assert req.authorization == "Bearer t0ken"
    assert req.authority == "example.org"
    assert req.path == "/.well-known/masque/ip/192.0.2.0%2F24/6/"
    assert req.headers == tuple(base())


@pytest.mark.parametrize(
    "value",
    [b"?1", b"?1;foo=bar", b"?1; a=1;b=?0", b'?1;s="x\\"y\\\\";t=tok/en:1', b"?1;n=-1.5;d=:aGk=:",
     b"?1;b=:aGk:", b"?1;k*=*x", b"?1 "],
)  # fmt: skip
def test_validate_capsule_protocol_true_forms(value: bytes) -> None:
    headers = [(n, value if n == b"capsule-protocol" else v) for n, v in FIGURE_4]
    if value.endswith(b" "):
        # A field value never ends in whitespace on the wire; the parser still
        # discards trailing SP (RFC 8941 §4.2).
        assert parse_capsule_protocol([value]) is True
        return
    assert validate_connect_ip_request(headers, TEMPLATE).capsule_protocol is True


@pytest.mark.parametrize(
    "authorities",
    [["example.org"], ["EXAMPLE.ORG:443"], ["other.example", "example.org:443"]],
)
def test_validate_authorities_normalised(authorities: list[str]) -> None:
    validate_connect_ip_request(FIGURE_4, TEMPLATE, authorities=authorities)


def test_validate_optional_capsule_protocol() -> None:
    headers = [h for h in FIGURE_4 if h[0] != b"capsule-protocol"]
    req = validate_connect_ip_request(headers, TEMPLATE, require_capsule_protocol=False)
    assert req.capsule_protocol is False


def test_validate_accepts_matching_host_and_te_trailers() -> None:
    headers = [*FIGURE_4, (b"host", b"example.org"), (b"te", b"trailers")]
    validate_connect_ip_request(headers, TEMPLATE)


def test_validate_rejects_bad_configured_authority() -> None:
    with pytest.raises(ValueError, match="configured authority"):
        validate_connect_ip_request(FIGURE_4, TEMPLATE, authorities=["u@x"])


def test_validate_rejects_non_bytes() -> None:
    with pytest.raises(TypeError):
        validate_connect_ip_request([(":method", "CONNECT")], TEMPLATE)  # type: ignore[list-item]


# Mutations of a valid request, each breaking exactly one rule.


def replace(name: bytes, value: bytes) -> Callable[[Headers], Headers]:
    return lambda h: [(n, value if n == name else v) for n, v in h]


def drop(name: bytes) -> Callable[[Headers], Headers]:
    return lambda h: [(n, v) for n, v in h if n != name]


def add(name: bytes, value: bytes) -> Callable[[Headers], Headers]:
    return lambda h: [*h, (name, value)]


def rename(old: bytes, new: bytes) -> Callable[[Headers], Headers]:
    return lambda h: [(new if n == old else n, v) for n, v in h]


def pseudo_last(h: Headers) -> Headers:
    return [*(x for x in h if x[0] != b":path"), (b":path", dict(h)[b":path"])]


def prepend(name: bytes, value: bytes) -> Callable[[Headers], Headers]:
    return lambda h: [(name, value), *h]


INVALID: list[tuple[str, Callable[[Headers], Headers], int, str]] = [
    # field syntax and structure (RFC 9114 §4.2, §4.3.1): 400
    ("uppercase name", rename(b"capsule-protocol", b"Capsule-Protocol"), 400,
     "uppercase-header-name"),
    ("uppercase pseudo", rename(b":path", b":Path"), 400, "uppercase-header-name"),
    ("space in name", add(b"bad name", b"x"), 400, "invalid-header-name"),
    ("empty name", add(b"", b"x"), 400, "invalid-header-name"),
    ("bare colon", add(b":", b"x"), 400, "invalid-header-name"),
    ("colon inside name", add(b"a:b", b"x"), 400, "invalid-header-name"),
    ("non-ASCII name", add(b"x-\xc3\xa9", b"x"), 400, "invalid-header-name"),
    ("CRLF in value", add(b"x-a", b"a\r\nb: c"), 400, "invalid-header-value"),
    ("NUL in value", replace(b":authority", b"example.org\x00"), 400, "invalid-header-value"),
    ("leading space", replace(b"capsule-protocol", b" ?1"), 400, "invalid-header-value"),
    ("trailing tab", replace(b":path", b"/.well-known/masque/ip/*/*/\t"), 400,
     "invalid-header-value"),
    ("pseudo after regular", pseudo_last, 400, "pseudo-header-after-regular"),
    ("response pseudo", prepend(b":status", b"200"), 400, "unknown-pseudo-header"),
    ("made-up pseudo", prepend(b":foo", b"bar"), 400, "unknown-pseudo-header"),
    ("duplicate :path", prepend(b":path", b"/.well-known/masque/ip/*/*/"), 400,
     "duplicate-pseudo-header"),
    ("duplicate :method", prepend(b":method", b"CONNECT"), 400, "duplicate-pseudo-header"),
    ("connection", add(b"connection", b"keep-alive"), 400, "connection-specific-header"),
    ("keep-alive", add(b"keep-alive", b"5"), 400, "connection-specific-header"),
    ("transfer-encoding", add(b"transfer-encoding", b"chunked"), 400,
     "connection-specific-header"),
    ("upgrade", add(b"upgrade", b"connect-ip"), 400, "connection-specific-header"),
    ("te gzip", add(b"te", b"gzip"), 400, "invalid-te"),
    # RFC 9297 §3.2: no content fields with the Capsule Protocol
    ("content-length", add(b"content-length", b"0"), 400, "content-with-capsule-protocol"),
    ("content-type", add(b"content-type", b"text/plain"), 400, "content-with-capsule-protocol"),
    # :method
    ("no :method", drop(b":method"), 400, "missing-method"),
    ("GET with :protocol", replace(b":method", b"GET"), 400, "protocol-without-connect"),
    ("GET", lambda h: drop(b":protocol")(replace(b":method", b"GET")(h)), 405,
     "method-not-allowed"),
    ("lowercase connect", lambda h: drop(b":protocol")(replace(b":method", b"connect")(h)), 405,
     "method-not-allowed"),
    # :protocol
    ("plain CONNECT", drop(b":protocol"), 400, "missing-protocol"),
    ("empty :protocol", replace(b":protocol", b""), 400, "invalid-protocol"),
    ("non-token :protocol", replace(b":protocol", b"connect ip"), 400, "invalid-protocol"),
    ("connect-udp", replace(b":protocol", b"connect-udp"), 501, "unsupported-protocol"),
    ("websocket", replace(b":protocol", b"websocket"), 501, "unsupported-protocol"),
    ("CONNECT-IP", replace(b":protocol", b"CONNECT-IP"), 501, "unsupported-protocol"),
    # :scheme
    ("no :scheme", drop(b":scheme"), 400, "missing-scheme"),
    ("empty :scheme", replace(b":scheme", b""), 400, "missing-scheme"),
    ("http", replace(b":scheme", b"http"), 400, "invalid-scheme"),
    # :authority
    ("no :authority", drop(b":authority"), 400, "missing-authority"),
    ("empty :authority", replace(b":authority", b""), 400, "missing-authority"),
    ("userinfo", replace(b":authority", b"u@example.org"), 400, "invalid-authority"),
    ("port 0", replace(b":authority", b"example.org:0"), 400, "invalid-authority"),
    ("non-ASCII authority", replace(b":authority", b"\xc3\xa9.example"), 400,
     "invalid-header-value"),
    ("host differs", add(b"host", b"other.example"), 400, "host-authority-mismatch"),
    ("two hosts", lambda h: add(b"host", b"example.org")(add(b"host", b"example.org")(h)), 400,
     "host-authority-mismatch"),
    # capsule-protocol (RFC 9297 §3.4, RFC 8941): 400
    ("no capsule-protocol", drop(b"capsule-protocol"), 400, "missing-capsule-protocol"),
    ("?0", replace(b"capsule-protocol", b"?0"), 400, "capsule-protocol-false"),
    ("?0 with params", replace(b"capsule-protocol", b"?0;a=1"), 400, "capsule-protocol-false"),
    ("two lines", add(b"capsule-protocol", b"?1"), 400, "invalid-capsule-protocol"),
    ("integer", replace(b"capsule-protocol", b"1"), 400, "invalid-capsule-protocol"),
    ("token", replace(b"capsule-protocol", b"true"), 400, "invalid-capsule-protocol"),
    ("string", replace(b"capsule-protocol", b'"?1"'), 400, "invalid-capsule-protocol"),
    ("?2", replace(b"capsule-protocol", b"?2"), 400, "invalid-capsule-protocol"),
    ("empty", replace(b"capsule-protocol", b""), 400, "invalid-capsule-protocol"),
    ("junk after", replace(b"capsule-protocol", b"?1 x"), 400, "invalid-capsule-protocol"),
    ("inner list", replace(b"capsule-protocol", b"(?1)"), 400, "invalid-capsule-protocol"),
    ("uppercase key", replace(b"capsule-protocol", b"?1;Foo=1"), 400,
     "invalid-capsule-protocol"),
    ("empty param value", replace(b"capsule-protocol", b"?1;foo="), 400,
     "invalid-capsule-protocol"),
    ("bad param", replace(b"capsule-protocol", b"?1;a=?x"), 400, "invalid-capsule-protocol"),
    # authorization
    ("two authorizations", add(b"authorization", b"Bearer other"), 400,
     "duplicate-authorization"),
    ("non-ASCII authorization", replace(b"authorization", b"Bearer \xff"), 400,
     "invalid-header-value"),
    # :path (RFC 9484 §4.4, §4.6)
    ("no :path", drop(b":path"), 400, "missing-path"),
    ("empty :path", replace(b":path", b""), 400, "missing-path"),
    ("foreign path", replace(b":path", b"/index.html"), 404, "no-template-match"),
    ("host bits", replace(b":path", b"/.well-known/masque/ip/192.0.2.1%2F24/6/"), 400,
     "target-host-bits-set"),
    ("ipproto 256", replace(b":path", b"/.well-known/masque/ip/*/256/"), 400, "invalid-ipproto"),
    ("bad hostname", replace(b":path", b"/.well-known/masque/ip/a_b/6/"), 400, "invalid-target"),
    ("long path", replace(b":path", b"/" + b"a" * 9000), 414, "path-too-long"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("mutate", "status", "rule"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID]
)
def test_validate_invalid(mutate: Callable[[Headers], Headers], status: int, rule: str) -> None:
    with pytest.raises(RequestError) as info:
        validate_connect_ip_request(mutate(base()), TEMPLATE)
    assert (info.value.http_status, info.value.rule) == (status, rule)


def test_every_documented_rule_is_exercised() -> None:
    # Each rule named in validate_connect_ip_request's docstring has a case here
    # (421 has its own test below, since it needs the authorities argument).
    doc = validate_connect_ip_request.__doc__ or ""
    documented = set(re.findall(r"``([a-z]+(?:-[a-z]+)+)``", doc.split("Rules raised here")[1]))
    documented.discard("allow")
    covered = {case[3] for case in INVALID} | {"misdirected-authority"}
    assert documented == covered - {
        "no-template-match", "target-host-bits-set", "invalid-ipproto", "invalid-target",
        "path-too-long",
    }  # fmt: skip


def test_misdirected_authority_is_421() -> None:
    with pytest.raises(RequestError) as info:
        validate_connect_ip_request(base(), TEMPLATE, authorities=["relay.example"])
    assert (info.value.http_status, info.value.rule) == (421, "misdirected-authority")
    with pytest.raises(RequestError) as info:
        validate_connect_ip_request(base(), TEMPLATE, authorities=["example.org:8443"])
    assert info.value.http_status == 421


def test_first_failure_decides() -> None:
    # A GET to a foreign path is a 405, not a 404: method is checked first.
    headers: Headers = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/x")]
    with pytest.raises(RequestError) as info:
        validate_connect_ip_request(headers, TEMPLATE)
    assert info.value.http_status == 405
    # Missing capsule-protocol is reported before the path mismatch.
    bad = drop(b"capsule-protocol")(replace(b":path", b"/x")(base()))
    with pytest.raises(RequestError) as info:
        validate_connect_ip_request(bad, TEMPLATE)
    assert info.value.rule == "missing-capsule-protocol"


# ------------------------------------------------------------------- responses


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        (200, [(b":status", b"200"), (b"capsule-protocol", b"?1")]),
        (204, [(b":status", b"204"), (b"capsule-protocol", b"?1")]),
        (400, [(b":status", b"400")]),
        (404, [(b":status", b"404")]),
        (405, [(b":status", b"405"), (b"allow", b"CONNECT")]),
        (421, [(b":status", b"421")]),
        (501, [(b":status", b"501")]),
    ],
)
def test_response_headers(status: int, headers: Headers) -> None:
    assert build_connect_ip_response_headers(status) == headers


@pytest.mark.parametrize("status", [100, 101, 199, 600, 0])
def test_response_headers_reject_non_final(status: int) -> None:
    with pytest.raises(ValueError):
        build_connect_ip_response_headers(status)


# -------------------------------------------------------- capsule-protocol parser


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], False),
        ([b"?1"], True),
        ([b"?0"], False),
        ([b"?1;a"], True),
        ([b"?1;a=1;a=2"], True),
        ([b"?1;a=999999999999999"], True),
        ([b"?1;a=-999999999999999"], True),
        ([b"?1;a=1234567890123456"], False),  # 16-digit integer
        ([b"?1;a=123456789012.123"], True),
        ([b"?1;a=1234567890123.1"], False),  # 13-digit integer part
        ([b"?1;a=1.1234"], False),
        ([b"?1;a=1."], False),
        ([b"?1;a=-"], False),
        ([b"?1;a=-x"], False),
        ([b'?1;a="unterminated'], False),
        ([b'?1;a="bad\\escape"'], False),
        ([b'?1;a="tab\there"'], False),
        ([b"?1;a=:not base64!:"], False),
        ([b"?1;a=:aGk="], False),
        ([b"?1;a=:a:"], False),  # one base64 character cannot decode
        ([b"?1;"], False),
        ([b"?1;;a"], False),
        ([b"?1;a;"], False),
        ([b"?1; ;a"], False),
        ([b"?"], False),
        ([b"?10"], False),
        ([b"?1,"], False),
        ([b"?1", b"?1"], False),  # combined into a List: ignored (RFC 9297 §3.4)
        ([b"\xff"], False),
        ([b"  ?1"], True),  # leading SP discarded (RFC 8941 §4.2)
    ],
)
def test_parse_capsule_protocol(values: list[bytes], expected: bool) -> None:
    assert parse_capsule_protocol(values) is expected


@given(st.lists(st.binary(max_size=24), max_size=3))
def test_parse_capsule_protocol_total(values: list[bytes]) -> None:
    assert parse_capsule_protocol(values) in (True, False)


@given(st.text(alphabet='?10;=a-z*."\\:+/ ,()', max_size=24))
def test_parse_capsule_protocol_structured_fuzz(value: str) -> None:
    result = parse_capsule_protocol([value.encode()])
    if result:
        assert value.lstrip(" ").startswith("?1")


# ------------------------------------------------------------------ properties


@given(scope=scopes, template=st.sampled_from(FULL_TEMPLATES))
def test_property_build_then_validate(scope: Scope, template: str) -> None:
    tpl = UriTemplate.parse(template)
    headers = build_connect_ip_headers(tpl, scope.target, scope.ipproto, authorization="Bearer x")
    req = validate_connect_ip_request(headers, tpl, authorities=[tpl.authority])
    assert req.scope == scope
    assert req.authorization == "Bearer x"


_NAMES = [
    b":method", b":protocol", b":scheme", b":authority", b":path", b":status", b"capsule-protocol",
    b"authorization", b"host", b"te", b"content-length", b"connection", b"x-extra", b"Upper",
]  # fmt: skip
_VALUES = [
    b"CONNECT", b"GET", CONNECT_IP_PROTOCOL.encode(), b"https", b"example.org",
    b"/.well-known/masque/ip/*/*/", b"/.well-known/masque/ip/10.0.0.0%2F8/6/", b"?1", b"?0",
    b"trailers", b"",
]  # fmt: skip
_fields = st.tuples(
    st.sampled_from(_NAMES) | st.binary(max_size=8),
    st.sampled_from(_VALUES) | st.binary(max_size=40),
)


@given(st.lists(_fields, max_size=10))
def test_property_random_headers_raise_only_request_error(headers: Headers) -> None:
    try:
        req = validate_connect_ip_request(headers, TEMPLATE)
    except RequestError as exc:
        assert exc.http_status in (400, 404, 405, 414, 421, 501)
        return
    assert isinstance(req.scope.target, type(TARGET_ANY) | TargetPrefix | TargetHostname)


@given(st.permutations(FIGURE_4))
def test_property_pseudo_header_order_is_free(headers: Headers) -> None:
    # Pseudo-headers may come in any order, as long as all precede regular fields.
    pseudo = [h for h in headers if h[0].startswith(b":")]
    regular = [h for h in headers if not h[0].startswith(b":")]
    assert validate_connect_ip_request(pseudo + regular, TEMPLATE).scope == Scope()
