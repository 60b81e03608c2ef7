"""masque.template: URI template parsing (RFC 9484 §3, RFC 6570) and scopes (§4.6)."""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from masque.errors import RequestError, TemplateError
from masque.template import (
    DEFAULT_PATH_TEMPLATE,
    MAX_PATH_LENGTH,
    TARGET_ANY,
    Scope,
    TargetHostname,
    TargetPrefix,
    TargetScope,
    UriTemplate,
    as_ipproto,
    as_target,
    format_target,
    parse_ipproto,
    parse_target,
    split_authority,
)

DEFAULT = "https://example.org/.well-known/masque/ip/{target}/{ipproto}/"
QUERY_FORM = "https://proxy.example.org:4443/masque/ip{?target,ipproto}"
QUERY_SIMPLE = "https://proxy.example.org:4443/masque/ip?t={target}&i={ipproto}"
QUERY_CONTINUED = "https://proxy.example.org/masque?user=bob{&target,ipproto}"
FIXED = "https://masque.example.org/?user=bob"
MID_SEGMENT = "https://r.example/t-{target}-x/p{ipproto}"

# Templates that carry both variables: every scope round-trips through them.
FULL_TEMPLATES = [
    DEFAULT,
    QUERY_FORM,
    QUERY_SIMPLE,
    QUERY_CONTINUED,
    MID_SEGMENT,
    "https://r.example/ip{?ipproto,target}",
    "https://r.example/ip{?target}{&ipproto}",
    "https://r.example/{ipproto}/x?t={target}",
]


def net(text: str) -> TargetPrefix:
    return TargetPrefix(ipaddress.ip_network(text))


# ------------------------------------------------------------------ valid templates


@pytest.mark.parametrize(
    ("text", "authority", "host", "port", "variables", "path_template"),
    [
        # RFC 9484 §3, Figure 1
        (DEFAULT, "example.org", "example.org", 443, {"target", "ipproto"}, DEFAULT_PATH_TEMPLATE),
        (
            "https://proxy.example.org:4443/masque/ip?t={target}&i={ipproto}",
            "proxy.example.org:4443",
            "proxy.example.org",
            4443,
            {"target", "ipproto"},
            "/masque/ip?t={target}&i={ipproto}",
        ),
        (QUERY_FORM, "proxy.example.org:4443", "proxy.example.org", 4443, {"target", "ipproto"},
         "/masque/ip{?target,ipproto}"),
        (FIXED, "masque.example.org", "masque.example.org", 443, set(), "/?user=bob"),
        # ours
        ("HTTPS://Relay.Example:8443/x", "Relay.Example:8443", "relay.example", 8443, set(), "/x"),
        ("https://[2001:db8::1]:4433/ip/{target}/", "[2001:db8::1]:4433", "2001:db8::1", 4433,
         {"target"}, "/ip/{target}/"),
        ("https://192.0.2.7/ip/{ipproto}", "192.0.2.7", "192.0.2.7", 443, {"ipproto"},
         "/ip/{ipproto}"),
        (QUERY_CONTINUED, "proxy.example.org", "proxy.example.org", 443, {"target", "ipproto"},
         "/masque?user=bob{&target,ipproto}"),
        ("https://r.example/ip{?target}{&ipproto}", "r.example", "r.example", 443,
         {"target", "ipproto"}, "/ip{?target}{&ipproto}"),
        (MID_SEGMENT, "r.example", "r.example", 443, {"target", "ipproto"},
         "/t-{target}-x/p{ipproto}"),
        ("https://r.example/a%20b/{target}", "r.example", "r.example", 443, {"target"},
         "/a%20b/{target}"),
        ("https://r.example/", "r.example", "r.example", 443, set(), "/"),
    ],
)  # fmt: skip
def test_parse_valid(
    text: str, authority: str, host: str, port: int, variables: set[str], path_template: str
) -> None:
    tpl = UriTemplate.parse(text)
    assert tpl.text == text
    assert tpl.scheme == "https"
    assert tpl.authority == authority
    assert tpl.host == host
    assert tpl.port == port
    assert tpl.variables == variables
    assert tpl.path_template == path_template
    assert tpl == UriTemplate.parse(text)
    assert hash(tpl) == hash(UriTemplate.parse(text))
    assert str(tpl) == text


def test_default_template() -> None:
    tpl = UriTemplate.default("relay.example", 4433)
    assert tpl.text == "https://relay.example:4433/.well-known/masque/ip/{target}/{ipproto}/"
    v6 = UriTemplate.default("2001:db8::1")
    assert v6.authority == "[2001:db8::1]:443"
    assert v6.host == "2001:db8::1"


def test_constructor_is_private() -> None:
    with pytest.raises(TypeError):
        UriTemplate()


# ---------------------------------------------------------------- invalid templates


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("", "template-syntax"),
        ("/relative/{target}", "template-syntax"),
        ("https:/example.org/", "template-syntax"),
        ("http://example.org/{target}", "template-scheme"),
        ("masque://example.org/{target}", "template-scheme"),
        ("https://example.org", "template-path"),
        ("https://example.org?x=1", "template-path"),
        ("https://example.org#frag", "template-path"),
        ("https://example.org{?target}", "template-authority"),
        ("https://{host}/ip", "template-authority"),
        ("https://ex{target}.org/", "template-authority"),
        ("https:///ip", "template-authority"),
        ("https://user@example.org/", "template-authority"),
        ("https://example.org:0/", "template-authority"),
        ("https://example.org:65536/", "template-authority"),
        ("https://example.org:44a/", "template-authority"),
        ("https://example.org:/", "template-authority"),
        ("https://[2001:db8::1/", "template-authority"),
        ("https://[2001:db8::zz]/", "template-authority"),
        ("https://2001:db8::1/", "template-authority"),
        ("https://ex ample.org/", "template-charset"),
        ("https://example.org/ip/\u00e9", "template-charset"),
        ("https://example.org/ip\t", "template-charset"),
        # RFC 9484 §3: forbidden operators
        ("https://example.org/{+target}", "template-operator"),
        ("https://example.org/{#target}", "template-operator"),
        ("https://example.org/ip{.target}", "template-operator"),
        ("https://example.org/ip{/target}", "template-operator"),
        ("https://example.org/ip{;target}", "template-operator"),
        # RFC 6570 §2.2: reserved operators
        ("https://example.org/{=target}", "template-operator"),
        ("https://example.org/{,target}", "template-operator"),
        ("https://example.org/{!target}", "template-operator"),
        ("https://example.org/{@target}", "template-operator"),
        ("https://example.org/{|target}", "template-operator"),
        # level 4 modifiers
        ("https://example.org/{target*}", "template-modifier"),
        ("https://example.org/{target:3}", "template-modifier"),
        ("https://example.org/ip{?target*}", "template-modifier"),
        # variables
        ("https://example.org/{user}/{target}", "template-variable"),
        ("https://example.org/ip{?target,user}", "template-variable"),
        ("https://example.org/{Target}", "template-variable"),
        ("https://example.org/{target}/{target}", "template-variable"),
        ("https://example.org/{target}/x{?target}", "template-variable"),
        ("https://example.org/{tar-get}", "template-syntax"),
        ("https://example.org/{}", "template-syntax"),
        ("https://example.org/{?}", "template-syntax"),
        ("https://example.org/{target", "template-syntax"),
        ("https://example.org/target}", "template-syntax"),
        ("https://example.org/{ta{rget}", "template-syntax"),
        # literals
        ("https://example.org/ip#frag", "template-syntax"),
        ("https://example.org/ip%zz/{target}", "template-syntax"),
        ("https://example.org/ip%4", "template-syntax"),
        ("https://example.org/a|b", "template-syntax"),
        ("https://example.org/a<b>", "template-syntax"),
        ("https://example.org/a^b", "template-syntax"),
        # layouts that cannot be matched unambiguously
        ("https://example.org/{target,ipproto}", "template-layout"),
        ("https://example.org/{target}{ipproto}", "template-layout"),
        ("https://example.org/ip{?target}/x", "template-layout"),
        ("https://example.org/ip{?target}{ipproto}", "template-layout"),
        ("https://example.org/ip?x=1{?target}", "template-layout"),
        ("https://example.org/ip{?target}{?ipproto}", "template-layout"),
        ("https://example.org/ip{&target}", "template-layout"),
    ],
)
def test_parse_invalid(text: str, rule: str) -> None:
    with pytest.raises(TemplateError) as info:
        UriTemplate.parse(text)
    assert info.value.rule == rule
    assert str(info.value)


def test_parse_rejects_non_str() -> None:
    with pytest.raises(TypeError):
        UriTemplate.parse(b"https://example.org/")  # type: ignore[arg-type]


@given(st.text(max_size=80))
def test_parse_random_text_raises_only_template_error(text: str) -> None:
    with contextlib.suppress(TemplateError):
        UriTemplate.parse(text)


@given(st.text(alphabet="{}?&=/:%+#.;,*targeipoTxy0-9", max_size=40))
def test_parse_random_paths_raise_only_template_error(path: str) -> None:
    try:
        tpl = UriTemplate.parse("https://r.example/" + path)
    except TemplateError:
        return
    # Whatever parses must expand and match its own expansion.
    assert tpl.match(tpl.expand()) == Scope()


# ----------------------------------------------------------------------- expansion


@pytest.mark.parametrize(
    ("template", "target", "ipproto", "path"),
    [
        (DEFAULT, TARGET_ANY, None, "/.well-known/masque/ip/*/*/"),  # RFC 9484 Figure 4
        (DEFAULT, "*", "*", "/.well-known/masque/ip/*/*/"),
        (
            DEFAULT,
            ipaddress.ip_network("192.0.2.0/24"),
            6,
            "/.well-known/masque/ip/192.0.2.0%2F24/6/",
        ),
        (DEFAULT, "192.0.2.0/24", "17", "/.well-known/masque/ip/192.0.2.0%2F24/17/"),
        (DEFAULT, ipaddress.ip_address("192.0.2.1"), 0, "/.well-known/masque/ip/192.0.2.1/0/"),
        (DEFAULT, "192.0.2.1/32", 255, "/.well-known/masque/ip/192.0.2.1/255/"),
        (DEFAULT, "2001:db8::/32", None, "/.well-known/masque/ip/2001%3Adb8%3A%3A%2F32/*/"),
        # RFC 9484 §4.6 example encoding of 2001:db8::42
        (DEFAULT, "2001:db8::42", None, "/.well-known/masque/ip/2001%3Adb8%3A%3A42/*/"),
        (DEFAULT, "0.0.0.0/0", None, "/.well-known/masque/ip/0.0.0.0%2F0/*/"),
        (DEFAULT, "::/0", 58, "/.well-known/masque/ip/%3A%3A%2F0/58/"),
        (DEFAULT, "Target.Example.COM.", 132, "/.well-known/masque/ip/target.example.com/132/"),
        (DEFAULT, TargetHostname("a-b.example"), None, "/.well-known/masque/ip/a-b.example/*/"),
        # RFC 9484 §8.3 example
        (QUERY_FORM, "target.example.com", 132, "/masque/ip?target=target.example.com&ipproto=132"),
        (QUERY_FORM, TARGET_ANY, None, "/masque/ip?target=*&ipproto=*"),
        (QUERY_SIMPLE, "10.0.0.0/8", 1, "/masque/ip?t=10.0.0.0%2F8&i=1"),
        (QUERY_CONTINUED, "fd00::1", 17, "/masque?user=bob&target=fd00%3A%3A1&ipproto=17"),
        (MID_SEGMENT, "198.51.100.0/24", 50, "/t-198.51.100.0%2F24-x/p50"),
        ("https://r.example/ip{?target}{&ipproto}", TARGET_ANY, 6, "/ip?target=*&ipproto=6"),
        (FIXED, TARGET_ANY, None, "/?user=bob"),
        ("https://r.example/ip/{target}", "192.0.2.0/24", None, "/ip/192.0.2.0%2F24"),
    ],
)
def test_expand(template: str, target: object, ipproto: object, path: str) -> None:
    tpl = UriTemplate.parse(template)
    assert tpl.expand(target, ipproto) == path  # type: ignore[arg-type]
    assert tpl.expand_uri(target, ipproto) == f"https://{tpl.authority}{path}"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("template", "target", "ipproto"),
    [
        (FIXED, "192.0.2.0/24", None),
        (FIXED, TARGET_ANY, 6),
        ("https://r.example/ip/{target}", TARGET_ANY, 17),
        ("https://r.example/ip/{ipproto}", "example.com", None),
    ],
)
def test_expand_refuses_scope_the_template_cannot_carry(
    template: str, target: object, ipproto: object
) -> None:
    with pytest.raises(ValueError, match=r"no '(target|ipproto)' variable"):
        UriTemplate.parse(template).expand(target, ipproto)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("target", "ipproto", "error"),
    [
        ("192.0.2.1/24", None, ValueError),  # host bits
        ("not a host", None, ValueError),
        ("", None, ValueError),
        (TARGET_ANY, 256, ValueError),
        (TARGET_ANY, -1, ValueError),
        (TARGET_ANY, "tcp", ValueError),
        (TARGET_ANY, True, TypeError),
        (TARGET_ANY, 6.0, TypeError),
        (42, None, TypeError),
    ],
)
def test_expand_rejects_bad_values(target: object, ipproto: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        UriTemplate.parse(DEFAULT).expand(target, ipproto)  # type: ignore[arg-type]


# ------------------------------------------------------------------------ matching


@pytest.mark.parametrize(
    ("template", "path", "scope"),
    [
        (DEFAULT, "/.well-known/masque/ip/*/*/", Scope()),
        (DEFAULT, "/.well-known/masque/ip/%2A/%2A/", Scope()),
        (DEFAULT, "/.well-known/masque/ip/%2a/*/", Scope()),
        (DEFAULT, "/.well-known/masque/ip/192.0.2.0%2F24/6/", Scope(net("192.0.2.0/24"), 6)),
        (DEFAULT, "/.well-known/masque/ip/192.0.2.0%2f24/6/", Scope(net("192.0.2.0/24"), 6)),
        (DEFAULT, "/.well-known/masque/ip/192.0.2.1/17/", Scope(net("192.0.2.1/32"), 17)),
        (DEFAULT, "/.well-known/masque/ip/192.0.2.1%2F32/17/", Scope(net("192.0.2.1/32"), 17)),
        (DEFAULT, "/.well-known/masque/ip/0.0.0.0%2F0/*/", Scope(net("0.0.0.0/0"))),
        (DEFAULT, "/.well-known/masque/ip/10.0.0.0%2F08/*/", Scope(net("10.0.0.0/8"))),
        (DEFAULT, "/.well-known/masque/ip/2001%3Adb8%3A%3A42/*/", Scope(net("2001:db8::42/128"))),
        (DEFAULT, "/.well-known/masque/ip/2001%3Adb8%3A%3A%2F32/58/",
         Scope(net("2001:db8::/32"), 58)),
        # colons sent raw: the decoded value is the same
        (DEFAULT, "/.well-known/masque/ip/2001:db8::%2F32/*/", Scope(net("2001:db8::/32"))),
        (DEFAULT, "/.well-known/masque/ip/%3A%3A%2F0/*/", Scope(net("::/0"))),
        (DEFAULT, "/.well-known/masque/ip/2001%3ADB8%3A%3A%2F032/*/", Scope(net("2001:db8::/32"))),
        (DEFAULT, "/.well-known/masque/ip/%3A%3Affff%3A192.0.2.1/*/",
         Scope(net("::ffff:192.0.2.1/128"))),
        (DEFAULT, "/.well-known/masque/ip/target.example.com/132/",
         Scope(TargetHostname("target.example.com"), 132)),
        (DEFAULT, "/.well-known/masque/ip/Target.Example.COM./*/",
         Scope(TargetHostname("target.example.com"))),
        (DEFAULT, "/.well-known/masque/ip/localhost/*/", Scope(TargetHostname("localhost"))),
        (DEFAULT, "/.well-known/masque/ip/1e100.net/*/", Scope(TargetHostname("1e100.net"))),
        (DEFAULT, "/.well-known/masque/ip/*/0/", Scope(ipproto=0)),
        (DEFAULT, "/.well-known/masque/ip/*/006/", Scope(ipproto=6)),
        (DEFAULT, "/.well-known/masque/ip/*/255/", Scope(ipproto=255)),
        (DEFAULT, b"/.well-known/masque/ip/*/1/", Scope(ipproto=1)),
        # RFC 9484 §8.3 / §8.4 request paths
        (QUERY_FORM, "/masque/ip?target=target.example.com&ipproto=132",
         Scope(TargetHostname("target.example.com"), 132)),
        (QUERY_FORM, "/masque/ip?ipproto=17&target=target.example.com",
         Scope(TargetHostname("target.example.com"), 17)),
        (QUERY_FORM, "/masque/ip", Scope()),
        (QUERY_FORM, "/masque/ip?", Scope()),
        (QUERY_FORM, "/masque/ip?ipproto=6", Scope(ipproto=6)),
        (QUERY_FORM, "/masque/ip?target=192.0.2.0/24", Scope(net("192.0.2.0/24"))),
        (QUERY_FORM, "/masque/ip?target=192.0.2.0%2F24&&ipproto=*", Scope(net("192.0.2.0/24"))),
        (QUERY_SIMPLE, "/masque/ip?t=fd00%3A%3A%2F8&i=6", Scope(net("fd00::/8"), 6)),
        (QUERY_CONTINUED, "/masque?user=bob", Scope()),
        (QUERY_CONTINUED, "/masque?user=bob&target=*&ipproto=1", Scope(ipproto=1)),
        (MID_SEGMENT, "/t-a-b.example-x/p*", Scope(TargetHostname("a-b.example"))),
        (FIXED, "/?user=bob", Scope()),
        ("https://r.example/ip/{ipproto}", "/ip/4", Scope(ipproto=4)),
    ],
)  # fmt: skip
def test_match(template: str, path: str | bytes, scope: Scope) -> None:
    assert UriTemplate.parse(template).match(path) == scope


@pytest.mark.parametrize(
    ("template", "path", "status", "rule"),
    [
        # not an expansion of the template: 404
        (DEFAULT, "/", 404, "no-template-match"),
        (DEFAULT, "/.well-known/masque/ip/*/*", 404, "no-template-match"),
        (DEFAULT, "/.well-known/masque/ip/*/*/x", 404, "no-template-match"),
        (DEFAULT, "/.well-known/masque/ip/*/*/?x=1", 404, "no-template-match"),
        (DEFAULT, "/.well-known/masque/udp/*/*/", 404, "no-template-match"),
        (DEFAULT, "/.WELL-KNOWN/masque/ip/*/*/", 404, "no-template-match"),
        # a raw "/" splits the value across segments
        (DEFAULT, "/.well-known/masque/ip/192.0.2.0/24/6/", 404, "no-template-match"),
        (QUERY_FORM, "/masque/ip?user=bob", 404, "no-template-match"),
        (QUERY_FORM, "/masque/ip?target=*&t=1", 404, "no-template-match"),
        (QUERY_FORM, "/masque/ipx", 404, "no-template-match"),
        (QUERY_FORM, "/masque/ip&target=*", 404, "no-template-match"),
        (QUERY_CONTINUED, "/masque?user=alice&target=*", 404, "no-template-match"),
        (QUERY_SIMPLE, "/masque/ip?i=6&t=*", 404, "no-template-match"),
        (FIXED, "/?user=bob&target=*", 404, "no-template-match"),
        (FIXED, "/", 404, "no-template-match"),
        # malformed values: 400 (RFC 9484 §4.1 "MUST treat the request as malformed")
        (DEFAULT, "/.well-known/masque/ip//6/", 400, "empty-variable"),
        (DEFAULT, "/.well-known/masque/ip/*//", 400, "empty-variable"),
        (QUERY_FORM, "/masque/ip?target=", 400, "empty-variable"),
        (QUERY_FORM, "/masque/ip?target=*&ipproto=", 400, "empty-variable"),
        (DEFAULT, "/.well-known/masque/ip/*/256/", 400, "invalid-ipproto"),
        (DEFAULT, "/.well-known/masque/ip/*/1000/", 400, "invalid-ipproto"),
        (DEFAULT, "/.well-known/masque/ip/*/0006/", 400, "invalid-ipproto"),
        (DEFAULT, "/.well-known/masque/ip/*/-1/", 400, "invalid-ipproto"),
        (DEFAULT, "/.well-known/masque/ip/*/%2B6/", 400, "invalid-ipproto"),
        (DEFAULT, "/.well-known/masque/ip/*/0x6/", 400, "invalid-ipproto"),
        (DEFAULT, "/.well-known/masque/ip/*/tcp/", 400, "invalid-ipproto"),
        (DEFAULT, "/.well-known/masque/ip/*/**/", 400, "invalid-ipproto"),
        (DEFAULT, "/.well-known/masque/ip/*/%D9%A6/", 400, "bad-percent-encoding"),
        # RFC 9484 §4.6: host bits below the prefix length MUST be zero
        (DEFAULT, "/.well-known/masque/ip/192.0.2.1%2F24/*/", 400, "target-host-bits-set"),
        (DEFAULT, "/.well-known/masque/ip/2001%3Adb8%3A%3A1%2F32/*/", 400, "target-host-bits-set"),
        (DEFAULT, "/.well-known/masque/ip/0.0.0.1%2F0/*/", 400, "target-host-bits-set"),
        (DEFAULT, "/.well-known/masque/ip/192.0.2.0%2F33/*/", 400, "invalid-target"),
        (DEFAULT, "/.well-known/masque/ip/192.0.2.0%2F024/*/", 400, "invalid-target"),
        (DEFAULT, "/.well-known/masque/ip/192.0.2.0%2F/*/", 400, "invalid-target"),
        (DEFAULT, "/.well-known/masque/ip/192.0.2.0%2Fx/*/", 400, "invalid-target"),
        (DEFAULT, "/.well-known/masque/ip/192.0.2.0%2F-1/*/", 400, "invalid-target"),
        (DEFAULT, "/.well-known/masque/ip/192.0.2.0%2F%2B8/*/", 400, "invalid-target"),
        (DEFAULT, "/.well-known/masque/ip/2001%3Adb8%3A%3A%2F129/*/", 400, "invalid-target"),
        (DEFAULT, "/.well-known/masque/ip/2001%3Adb8%3A%3A%2F0128/*/", 400, "invalid-target"),
        (DEFAULT, "/.well-known/masque/ip/fe80%3A%3A1%25eth0/*/", 400, "invalid-target"),
        (DEFAULT, "/.well-known/masque/ip/%5B2001%3Adb8%3A%3A1%5D/*/", 400, "invalid-target"),
        (DEFAULT, "/.well-known/masque/ip/2001%3Adb8%3A%3A%3A1/*/", 400, "invalid-target"),
        (DEFAULT, "/.well-known/masque/ip/192.0.2.256/*/", 400, "invalid-target"),
        (DEFAULT, "/.well-known/masque/ip/01.2.3.4/*/", 400, "invalid-target"),
        (DEFAULT, "/.well-known/masque/ip/1.2.3/*/", 400, "invalid-target"),
        (DEFAULT, "/.well-known/masque/ip/example.123/*/", 400, "invalid-target"),
        (DEFAULT, "/.well-known/masque/ip/example.com%2F24/*/", 400, "invalid-target"),
        (DEFAULT, "/.well-known/masque/ip/exa_mple.com/*/", 400, "invalid-target"),
        (DEFAULT, "/.well-known/masque/ip/-bad.example/*/", 400, "invalid-target"),
        (DEFAULT, "/.well-known/masque/ip/bad-.example/*/", 400, "invalid-target"),
        (DEFAULT, "/.well-known/masque/ip/a..example/*/", 400, "invalid-target"),
        (DEFAULT, "/.well-known/masque/ip/.example/*/", 400, "invalid-target"),
        (DEFAULT, "/.well-known/masque/ip/" + "a" * 64 + ".example/*/", 400, "invalid-target"),
        (DEFAULT, "/.well-known/masque/ip/" + ("a" * 63 + ".") * 4 + "com/*/", 400,
         "invalid-target"),
        (DEFAULT, "/.well-known/masque/ip/ex%20ample/*/", 400, "invalid-target"),
        (DEFAULT, "/.well-known/masque/ip/example.com%00/*/", 400, "invalid-target"),
        (DEFAULT, "/.well-known/masque/ip/**/*/", 400, "invalid-target"),
        (DEFAULT, "/.well-known/masque/ip/%zz/*/", 400, "bad-percent-encoding"),
        (DEFAULT, "/.well-known/masque/ip/%4/*/", 400, "bad-percent-encoding"),
        (DEFAULT, "/.well-known/masque/ip/ex%C3%A9mple/*/", 400, "bad-percent-encoding"),
        (QUERY_FORM, "/masque/ip?target", 400, "malformed-query"),
        (QUERY_FORM, "/masque/ip?target=*&target=*", 400, "duplicate-variable"),
        (QUERY_FORM, "/masque/ip?ipproto=6&ipproto=17", 400, "duplicate-variable"),
        # the path itself
        (DEFAULT, "", 400, "invalid-path"),
        (DEFAULT, "/.well-known/masque/ip/* /*/", 400, "invalid-path"),
        (DEFAULT, "/.well-known/masque/ip/\u00e9/*/", 400, "invalid-path"),
        (DEFAULT, b"/.well-known/masque/ip/\xc3\xa9/*/", 400, "invalid-path"),
        (DEFAULT, "/.well-known/masque/ip/" + "a" * MAX_PATH_LENGTH + "/*/", 414, "path-too-long"),
    ],
)  # fmt: skip
def test_match_invalid(template: str, path: str | bytes, status: int, rule: str) -> None:
    with pytest.raises(RequestError) as info:
        UriTemplate.parse(template).match(path)
    assert (info.value.http_status, info.value.rule) == (status, rule)
    assert len(str(info.value)) < 400  # peer input is clipped in messages


# --------------------------------------------------------------- scope value types


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("*", TARGET_ANY),
        ("192.0.2.0/24", net("192.0.2.0/24")),
        ("192.0.2.9", net("192.0.2.9/32")),
        ("2001:db8::/32", net("2001:db8::/32")),
        ("EXAMPLE.com", TargetHostname("example.com")),
        ("example.com.", TargetHostname("example.com")),
    ],
)
def test_parse_target(text: str, target: TargetScope) -> None:
    assert parse_target(text) == target
    assert as_target(text) == target


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (TARGET_ANY, "*"),
        (net("192.0.2.0/24"), "192.0.2.0/24"),
        (net("192.0.2.9/32"), "192.0.2.9"),
        (net("2001:db8::1/128"), "2001:db8::1"),
        (TargetHostname("example.com"), "example.com"),
    ],
)
def test_format_target(value: TargetScope, text: str) -> None:
    assert format_target(value) == text
    assert parse_target(text) == value


def test_target_conversions() -> None:
    assert as_target(ipaddress.ip_address("2001:db8::1")) == net("2001:db8::1/128")
    assert as_target(ipaddress.ip_network("10.0.0.0/8")) == net("10.0.0.0/8")
    assert net("10.0.0.0/8").version == 4
    assert str(net("10.0.0.0/8")) == "10.0.0.0/8"
    assert as_ipproto(None) is None
    assert as_ipproto("*") is None
    assert as_ipproto("17") == 17
    assert as_ipproto(0) == 0
    assert parse_ipproto("255") == 255
    assert str(Scope()) == "target=* ipproto=*"
    assert str(Scope(TargetHostname("x.example"), 6)) == "target=x.example ipproto=6"


def test_scope_types_validate() -> None:
    with pytest.raises(ValueError):
        TargetHostname("Example.com")
    with pytest.raises(ValueError):
        TargetHostname("example.com.")
    with pytest.raises(ValueError):
        TargetHostname("bad_name")
    with pytest.raises(TypeError):
        TargetPrefix("192.0.2.0/24")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Scope(ipproto=256)
    with pytest.raises(ValueError):
        Scope(ipproto=True)
    with pytest.raises(TypeError):
        Scope(target="*")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("authority", "expected"),
    [
        ("example.org", ("example.org", 443)),
        ("Example.ORG:8443", ("example.org", 8443)),
        ("[2001:DB8::1]:4433", ("2001:db8::1", 4433)),
        ("[::1]", ("::1", 443)),
        ("192.0.2.1:1", ("192.0.2.1", 1)),
    ],
)
def test_split_authority(authority: str, expected: tuple[str, int]) -> None:
    assert split_authority(authority) == expected


@pytest.mark.parametrize(
    "authority",
    ["", "u@example.org", "example.org:", "example.org:0", "example.org:123456", "[::1",
     "[fe80::1%eth0]", "[::1]x", "::1", "exa mple", "example.org:80:80"],
)  # fmt: skip
def test_split_authority_invalid(authority: str) -> None:
    with pytest.raises(ValueError):
        split_authority(authority)


# ----------------------------------------------------------------- round trips


ROUND_TRIP_SCOPES = [
    Scope(),
    Scope(net("192.0.2.0/24"), 6),
    Scope(net("192.0.2.1/32"), 17),
    Scope(net("0.0.0.0/0"), 0),
    Scope(net("2001:db8::/32"), 58),
    Scope(net("2001:db8::42/128")),
    Scope(net("::/0")),
    Scope(net("::ffff:192.0.2.0/120"), 255),
    Scope(TargetHostname("target.example.com"), 132),
    Scope(TargetHostname("localhost")),
    Scope(ipproto=1),
]


@pytest.mark.parametrize("template", FULL_TEMPLATES)
@pytest.mark.parametrize("scope", ROUND_TRIP_SCOPES, ids=str)
def test_round_trip(template: str, scope: Scope) -> None:
    tpl = UriTemplate.parse(template)
    assert tpl.match(tpl.expand(scope.target, scope.ipproto)) == scope


def test_round_trip_fixed_and_partial_templates() -> None:
    fixed = UriTemplate.parse(FIXED)
    assert fixed.match(fixed.expand()) == Scope()
    only_target = UriTemplate.parse("https://r.example/ip/{target}")
    scope = Scope(net("198.51.100.0/24"))
    assert only_target.match(only_target.expand(scope.target)) == scope
    only_proto = UriTemplate.parse("https://r.example/ip{?ipproto}")
    assert only_proto.match(only_proto.expand(ipproto=50)) == Scope(ipproto=50)


# ------------------------------------------------------------------ properties

_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,12}[a-z0-9])?", fullmatch=True)
_TLD = st.from_regex(r"[a-z]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)


@st.composite
def hostnames(draw: st.DrawFn) -> TargetHostname:
    labels = draw(st.lists(_LABEL, max_size=4))
    return TargetHostname(".".join([*labels, draw(_TLD)]))


@st.composite
def ipv4_prefixes(draw: st.DrawFn) -> TargetPrefix:
    length = draw(st.integers(0, 32))
    addr = draw(st.integers(0, 2**32 - 1)) >> (32 - length) << (32 - length) if length else 0
    return TargetPrefix(ipaddress.IPv4Network((addr, length)))


@st.composite
def ipv6_prefixes(draw: st.DrawFn) -> TargetPrefix:
    length = draw(st.integers(0, 128))
    addr = draw(st.integers(0, 2**128 - 1)) >> (128 - length) << (128 - length) if length else 0
    return TargetPrefix(ipaddress.IPv6Network((addr, length)))


targets: st.SearchStrategy[TargetScope] = st.one_of(
    st.just(TARGET_ANY), ipv4_prefixes(), ipv6_prefixes(), hostnames()
)
scopes = st.builds(Scope, targets, st.none() | st.integers(0, 255))


@given(scope=scopes, template=st.sampled_from(FULL_TEMPLATES))
def test_property_match_inverts_expand(scope: Scope, template: str) -> None:
    tpl = UriTemplate.parse(template)
    path = tpl.expand(scope.target, scope.ipproto)
    assert tpl.match(path) == scope
    assert tpl.match(path.encode()) == scope


@given(path=st.text(max_size=120), template=st.sampled_from([*FULL_TEMPLATES, FIXED]))
def test_property_random_text_raises_only_request_error(path: str, template: str) -> None:
    try:
        UriTemplate.parse(template).match(path)
    except RequestError as exc:
        assert exc.http_status in (400, 404, 414)


@given(path=st.binary(max_size=120))
def test_property_random_bytes_raise_only_request_error(path: bytes) -> None:
    try:
        UriTemplate.parse(DEFAULT).match(path)
    except RequestError as exc:
        assert exc.http_status in (400, 404, 414)


# Values built from the characters that matter, so the fuzzing reaches the value
# parsers instead of stopping at the literal prefix.
_VALUE_CHARS = "0123456789abcdefxAF.:%/*-_2F3A25"


@given(
    target=st.text(alphabet=_VALUE_CHARS, max_size=48),
    ipproto=st.text(alphabet=_VALUE_CHARS, max_size=6),
    template=st.sampled_from(FULL_TEMPLATES),
)
def test_property_structured_garbage_raises_only_request_error(
    target: str, ipproto: str, template: str
) -> None:
    tpl = UriTemplate.parse(template)
    path = tpl.expand().replace("*", target, 1).replace("*", ipproto, 1)
    try:
        scope = tpl.match(path)
    except RequestError as exc:
        assert exc.http_status in (400, 404)
        return
    # Whatever is accepted must survive a canonical round trip.
    assert tpl.match(tpl.expand(scope.target, scope.ipproto)) == scope
