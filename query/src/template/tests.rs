//! Unit tests of the template engine: Loki's behaviour first, then Prometheus'.

use std::collections::BTreeMap;

use crate::template::{Data, Host, MAX_OUTPUT_BYTES, Template, Value};

fn r(src: &str) -> String {
    r_at(src, 0)
}

fn r_at(src: &str, ts: i64) -> String {
    let t = Template::parse(src).unwrap_or_else(|e| panic!("parse {src:?}: {e}"));
    let lookup = |n: &str| -> Option<String> {
        match n {
            "app" => Some("foo".into()),
            "msg" => Some("  Hello World  ".into()),
            "n" => Some("42".into()),
            "m" => Some("7".into()),
            "f" => Some("3.5".into()),
            "empty" => Some(String::new()),
            "path" => Some("/api/v1/users".into()),
            "status" => Some("500".into()),
            _ => None,
        }
    };
    t.render("the line", ts, &lookup).unwrap_or_else(|e| panic!("render {src:?}: {e}"))
}

fn render_err(src: &str) -> String {
    let t = Template::parse(src).unwrap();
    t.render("", 0, &|_| None).unwrap_err()
}

#[test]
fn text_and_fields() {
    assert_eq!(r("plain text"), "plain text");
    assert!(Template::parse("plain").unwrap().is_literal());
    assert!(Template::parse("a {{/* c */}} b").unwrap().is_literal());
    assert!(!Template::parse("{{.app}}").unwrap().is_literal());
    assert_eq!(r("app={{.app}} missing={{.nope}}!"), "app=foo missing=!");
    assert_eq!(r("{{ .app }}"), "foo");
    assert_eq!(r(""), "");
}

#[test]
fn trimming() {
    assert_eq!(r("a  {{- .app -}}  b"), "afoob");
    assert_eq!(r("a \n {{- .app}} b"), "afoo b");
    assert_eq!(r("a {{.app -}} \n\t b"), "a foob");
    assert_eq!(r("x {{- /* comment */ -}} y"), "xy");
    assert_eq!(r("{{3 -}} 4"), "34");
    assert_eq!(r("{{-3}}"), "-3");
}

#[test]
fn literals() {
    assert_eq!(r(r#"{{"a\tb\n\"q\"\x41\u00e9"}}"#), "a\tb\n\"q\"Aé");
    assert_eq!(r("{{`raw\\n`}}"), "raw\\n");
    assert_eq!(r("{{ 42 }} {{ -7 }} {{ 3.5 }} {{ 1e3 }} {{ 0x1F }} {{ 'a' }}"), "42 -7 3.5 1000 31 97");
    assert_eq!(r("{{true}} {{false}}"), "true false");
    assert_eq!(r("{{ 1_000 }}"), "1000");
}

#[test]
fn pipelines_and_calls() {
    assert_eq!(r(r#"{{ .app | ToUpper | printf "%s!" }}"#), "FOO!");
    assert_eq!(r(r#"{{ replace "o" "0" .app }}"#), "f00");
    assert_eq!(r(r#"{{ .app | replace "o" "0" }}"#), "f00");
    assert_eq!(r(r#"{{ printf "%s-%s" (upper .app) (.app | lower) }}"#), "FOO-foo");
    assert_eq!(r(r#"{{ (.app) }}"#), "foo");
    assert_eq!(r("{{ __line__ | upper }}"), "THE LINE");
    assert_eq!(r(r#"{{ printf "%s" __line__ }}"#), "the line");
}

#[test]
fn conditionals() {
    let t = r#"{{if eq .status "500"}}err{{else if eq .status "200"}}ok{{else}}other{{end}}"#;
    assert_eq!(r(t), "err");
    assert_eq!(r(r#"{{if .empty}}y{{else}}n{{end}}"#), "n");
    assert_eq!(r(r#"{{if .nope}}y{{end}}"#), "");
    assert_eq!(r(r#"{{if 0}}y{{else}}n{{end}}"#), "n");
    assert_eq!(r(r#"{{if "0"}}y{{else}}n{{end}}"#), "y");
    assert_eq!(r(r#"{{if false}}y{{else if .app}}a{{end}}"#), "a");
    assert_eq!(r(r#"{{if and .app .n}}both{{end}}"#), "both");
    assert_eq!(r(r#"{{ or .empty .app }}"#), "foo");
    assert_eq!(r(r#"{{ and .app .empty "x" }}"#), "");
    assert_eq!(r(r#"{{ not .empty }} {{ not .app }}"#), "true false");
    assert_eq!(r(r#"{{ len .app }}"#), "3");
    assert_eq!(r(r#"{{if gt .n 5}}big{{end}}"#), "big");
    assert_eq!(r(r#"{{ lt .m .n }} {{ lt "7" "42" }} {{ lt "b" "a" }}"#), "true true false");
    assert_eq!(r(r#"{{ le 3 3 }} {{ ge 2 3 }} {{ ne .app "foo" }} {{ eq .f 3.5 }}"#), "true false false true");
    assert_eq!(r(r#"{{ eq .app "x" "y" "foo" }}"#), "true");
    assert_eq!(r("{{if .app}}\n  {{- .app -}}\n{{end}}"), "foo");
    assert_eq!(r(r#"{{if eq .status "500" "503"}}{{if .app}}A{{else}}B{{end}}{{end}}"#), "A");
}

#[test]
fn go_string_funcs() {
    assert_eq!(
        r(r#"{{ ToLower "ABC" }} {{ ToUpper "abc" }} {{ Title "hello wOrld-x_y" }}"#),
        "abc ABC Hello WOrld-X_y"
    );
    assert_eq!(r(r#"[{{ TrimSpace .msg }}]"#), "[Hello World]");
    assert_eq!(
        r(r#"{{ Trim "xxhixx" "x" }} {{ TrimLeft "xxhixx" "x" }} {{ TrimRight "xxhixx" "x" }}"#),
        "hi hixx xxhi"
    );
    assert_eq!(r(r#"{{ TrimPrefix "prefix-x" "prefix-" }} {{ TrimSuffix "a.log" ".log" }}"#), "x a");
    assert_eq!(r(r#"{{ Replace "aaaa" "a" "b" 2 }} {{ Replace "aaaa" "a" "b" -1 }}"#), "bbaa bbbb");
}

#[test]
fn sprig_string_funcs() {
    assert_eq!(r(r#"{{ lower "AbC" }} {{ upper "abc" }} {{ title "foo bar" }}"#), "abc ABC Foo Bar");
    assert_eq!(r(r#"{{ trunc 5 "hello world" }}|{{ trunc -5 "hello world" }}|{{ trunc 50 "hi" }}"#), "hello|world|hi");
    assert_eq!(r(r#"{{ substr 0 5 "hello world" }}|{{ substr 6 100 "hello world" }}"#), "hello|world");
    assert_eq!(r(r#"{{ .path | replace "/" "_" }}"#), "_api_v1_users");
    assert_eq!(r(r#"[{{ trim .msg }}] {{ trimAll "$" "$5.00$" }}"#), "[Hello World] 5.00");
    assert_eq!(r(r#"{{ trimPrefix "/api" .path }} {{ trimSuffix "users" .path }}"#), "/v1/users /api/v1/");
    assert_eq!(
        r(r#"{{ contains "v1" .path }} {{ hasPrefix "/api" .path }} {{ hasSuffix "x" .path }}"#),
        "true true false"
    );
    assert_eq!(r(r#"{{ repeat 3 "ab" }}"#), "ababab");
    assert_eq!(r(r#"{{ indent 2 "a\nb" }}|{{ nindent 2 "a" }}"#), "  a\n  b|\n  a");
    assert_eq!(r(r#"{{ .nope | default "none" }} {{ .app | default "none" }} {{ default "d" .empty }}"#), "none foo d");
    assert_eq!(r(r#"{{ if contains "api" .path }}api{{ end }}"#), "api");
}

#[test]
fn regex_funcs() {
    assert_eq!(r(r#"{{ regexReplaceAll "a(x*)b" "-ab-axxb-" "${1}W" }}"#), "-W-xxW-");
    assert_eq!(r(r#"{{ regexReplaceAll "a(x*)b" "-ab-axxb-" "$1W" }}"#), "---");
    assert_eq!(r(r#"{{ regexReplaceAllLiteral "a(x*)b" "-ab-axxb-" "${1}" }}"#), "-${1}-${1}-");
    assert_eq!(r(r#"{{ regexReplaceAll "[0-9]+" .path "N" }}"#), "/api/vN/users");
    assert_eq!(r(r#"{{ .path | regexReplaceAll "[0-9]+" "N" }}"#), "N");
    assert_eq!(r(r#"{{ count "a" "banana" }}"#), "3");
    assert_eq!(r(r#"{{ __line__ | count "e" }}"#), "2");
    let pat = r#"{{ regexReplaceAll .nope "abc" "x" }}"#;
    assert_eq!(r(pat), "xaxbxcx");
    assert!(Template::parse(r#"{{ regexReplaceAll "(" .app "x" }}"#).is_err());
}

#[test]
fn printf_verbs() {
    assert_eq!(r(r#"{{ printf "%s|%5s|%-5s|%.2s" "ab" "ab" "ab" "abc" }}"#), "ab|   ab|ab   |ab");
    assert_eq!(
        r(r#"{{ printf "%d|%5d|%-5d|%05d|%+d|%x|%X|%o|%b" 42 42 42 -42 42 255 255 8 5 }}"#),
        "42|   42|42   |-0042|+42|ff|FF|10|101"
    );
    assert_eq!(
        r(r#"{{ printf "%f|%.2f|%8.3f|%e|%g|%v" 3.14159 3.14159 3.14159 1234.5678 0.00001 2.5 }}"#),
        "3.141590|3.14|   3.142|1.234568e+03|1e-05|2.5"
    );
    assert_eq!(r(r#"{{ printf "%q|%v|%t|%x|%c|%%" "a\"b" true false "hi" 65 }}"#), r#""a\"b"|true|false|6869|A|%"#);
    assert_eq!(r(r#"{{ printf "%d" "x" }}"#), "%!d(string=x)");
    assert_eq!(r(r#"{{ printf "%s %s" "a" }}"#), "a %!s(MISSING)");
    assert_eq!(r(r#"{{ printf "%s" "a" "b" }}"#), "a%!(EXTRA string=b)");
    assert_eq!(r(r#"{{ printf "%s" 5 }}"#), "%!s(int=5)");
    assert_eq!(r(r#"{{ printf "%v %v %v" 1e6 123456.0 1e21 }}"#), "1e+06 123456 1e+21");
    assert_eq!(r(r#"{{ printf "%.3g|%g|%05s" 1234.0 100.0 "ab" }}"#), "1.23e+03|100|000ab");
    assert_eq!(r(r#"{{ printf "%6.2f|%-8.1f|" -3.14159 2.25 }}"#), " -3.14|2.2     |");
}

#[test]
fn timestamps() {
    let ts = 1_704_164_645_000_000_000; // 2024-01-02 03:04:05 UTC
    assert_eq!(r_at("{{ __timestamp__ }}", ts), "2024-01-02 03:04:05 +0000 UTC");
    assert_eq!(r_at("{{ __timestamp__ }}", ts + 123_000_000), "2024-01-02 03:04:05.123 +0000 UTC");
    assert_eq!(r_at("{{ __timestamp__ | unixEpoch }}", ts), "1704164645");
    assert_eq!(r_at("{{ __timestamp__ | unixEpochMillis }}", ts + 7_000_000), "1704164645007");
    assert_eq!(r_at("{{ __timestamp__ | unixEpochNanos }}", ts + 1), "1704164645000000001");
    assert_eq!(
        r_at(r#"{{ __timestamp__ | date "2006-01-02T15:04:05.000Z07:00" }}"#, ts + 5_000_000),
        "2024-01-02T03:04:05.005Z"
    );
    assert_eq!(
        r_at(r#"{{ date "Mon Jan _2 3:04PM MST 06 .999" __timestamp__ }}"#, ts + 500_000_000),
        "Tue Jan  2 3:04AM UTC 24 .5"
    );
    assert_eq!(r_at(r#"{{ date "January 2, 2006 -07:00 002" __timestamp__ }}"#, 0), "January 1, 1970 +00:00 001");
    assert_eq!(r_at("{{ printf \"%s\" __timestamp__ }}", 0), "1970-01-01 00:00:00 +0000 UTC");
    assert_eq!(r(r#"{{ unixToTime "1704164645" | unixEpochMillis }}"#), "1704164645000");
}

#[test]
fn math() {
    assert_eq!(r("{{ add 1 2 3 }} {{ sub 10 3 }} {{ mul 2 3 4 }} {{ div 7 2 }} {{ mod 7 3 }}"), "6 7 24 3 1");
    assert_eq!(r("{{ add .n .m }} {{ max 1 9 3 }} {{ min 4 2 8 }}"), "49 9 2");
    assert_eq!(r("{{ addf 1.1 2.2 }} {{ subf 5.5 1.25 }} {{ mulf 1.5 2 }} {{ divf 1 4 }}"), "3.3 4.25 3 0.25");
    assert_eq!(r("{{ ceil 1.2 }} {{ floor 1.8 }} {{ round 3.14159 2 }} {{ round 2.5 0 }}"), "2 1 3.14 3");
    assert_eq!(r("{{ .f | addf 1 }}"), "4.5");
    assert!(render_err("{{ div 1 0 }}").contains("divide by zero"));
    assert!(render_err("{{ mod 1 0 }}").contains("divide by zero"));
    assert!(render_err("{{ divf 1 0 }}").contains("division by zero"));
    assert!(render_err(r#"{{ add "abc" 1 }}"#).contains("bad number"));
}

#[test]
fn encoding_and_align() {
    assert_eq!(r(r#"{{ urlencode "a b&c=d/é" }}"#), "a+b%26c%3Dd%2F%C3%A9");
    assert_eq!(r(r#"{{ urldecode "a+b%26c" }}"#), "a b&c");
    assert!(render_err(r#"{{ urldecode "%zz" }}"#).contains("invalid URL escape"));
    assert_eq!(
        r(r#"{{ b64enc "hello" }} {{ b64enc "hi" }} {{ b64enc "abc" }} {{ b64enc "" }}"#),
        "aGVsbG8= aGk= YWJj "
    );
    assert_eq!(r(r#"{{ b64dec "aGVsbG8=" }} {{ b64dec "aGk=" }} {{ "hello" | b64enc | b64dec }}"#), "hello hi hello");
    assert_eq!(r(r#"{{ b64dec "a" }}"#), "illegal base64 data at input byte 0");
    assert_eq!(
        r(r#"[{{ alignLeft 5 "ab" }}][{{ alignRight 5 "ab" }}][{{ alignLeft 2 "abcd" }}][{{ alignRight 2 "abcd" }}]"#),
        "[ab   ][   ab][ab][cd]"
    );
}

#[test]
fn more_cases() {
    assert_eq!(
        r("{{ divf 2 3 }} {{ divf 10 4 }} {{ mulf 0.1 3 }} {{ subf 0.3 0.1 }}"),
        "0.6666666666666667 2.5 0.3 0.2"
    );
    assert_eq!(r("{{ 0755 }} {{ 08 }} {{ 0o17 }} {{ 0b101 }}"), "493 8 15 5");
    assert_eq!(r(r#"{{ upper "straße" }} {{ lower "ÀÉ" }}"#), "STRAßE àé");
    assert_eq!(r(r#"{{ date "Monthly Janx" 0 }}|{{ date "Mon Jan 2" 0 }}"#), "Monthly Janx|Thu Jan 1");
    assert_eq!(r(r#"{{if eq .app "x"}}1{{else if eq .app "y"}}2{{else if eq .app "foo"}}3{{else}}4{{end}}"#), "3");
    assert_eq!(r(r#"{{if .app}}{{if .empty}}a{{else}}b{{end}}{{else}}c{{end}}"#), "b");
    assert_eq!(r(r#"{{ printf "%s" (printf "%s-%s" (upper (lower "A")) "b") }}"#), "A-b");
    assert_eq!(r(r#"{{ printf "%05.1f|%x|%q" 3.14159 -255 'x' }}"#), "003.1|-ff|'x'");
    assert_eq!(r(r#"{{ print "a" 1 2 "b" }}"#), "a1 2b");
    assert_eq!(r(r#"{{ printf "%v|%v" (len .app) (eq 1 1) }}"#), "3|true");
    assert_eq!(r(r#"{{ "}}" }}"#), "}}");
    assert_eq!(r("a }} b"), "a }} b");
    assert_eq!(r(r#"{{ .nope }}|{{ .nope | upper }}"#), "|");
    assert_eq!(r("{{ add }}"), "0");
}

#[test]
fn parse_errors() {
    for bad in [
        "{{ .app",
        "{{ nosuchfunc .app }}",
        "{{ if .app }}x",
        "{{ end }}",
        "{{ else }}",
        r#"{{ "unterminated }}"#,
        "{{ }}",
        "{{ (upper .app }}",
        "{{ upper .app) }}",
        "{{ . }}",
        "{{ $ }}",
        "{{ $x }}",
        "{{ break }}",
        "{{ range .x }}{{ else if .y }}{{ end }}",
        "{{ define \"a\" }}x{{ end }}{{ define \"a\" }}y{{ end }}",
        "{{ if .app }}{{ define \"a\" }}x{{ end }}{{ end }}",
        "{{ $x := 1 }}{{ $x, $y := 2 }}",
        "{{ template .app }}",
        "{{ .app | \"lit\" }}",
        "{{ 12abc }}",
        "{{ /* unclosed }}",
    ] {
        let e = Template::parse(bad).err().unwrap_or_else(|| panic!("{bad:?} should fail"));
        assert!(e.contains("offset"), "{bad:?}: {e}");
    }
    let e = Template::parse("abc {{ nosuch }}").unwrap_err();
    assert!(e.contains("offset 7") && e.contains("nosuch"), "{e}");
}

#[test]
fn loki_accepts_go_template_control() {
    assert_eq!(r("{{ $x := .app }}{{ $x }}-{{ $x = upper $x }}{{ $x }}"), "foo-FOO");
    assert_eq!(r("{{ with .app }}[{{ . }}]{{ end }}{{ with .nope }}x{{ else }}none{{ end }}"), "[foo]none");
    assert_eq!(r(r#"{{ define "t" }}<{{ .app }}>{{ end }}{{ template "t" . }}"#), "<foo>");
    assert_eq!(r(r#"{{ block "b" . }}{{ .n }}{{ end }}"#), "42");
    assert_eq!(r("{{ range $i := 3 }}{{ $i }}{{ end }}"), "012");
    assert!(render_err("{{ range $i, $e := 3 }}{{ end }}").contains("two variables"));
    assert_eq!(r("{{ $.app }}"), "foo");
    assert!(render_err("{{ .app.x }}").contains("can't evaluate field x in type string"));
    assert!(render_err(r#"{{ define "t" }}{{ . }}{{ end }}{{ template "t" . }}"#).contains("label map"));
}

// ---------------------------------------------------------------------------
// Prometheus dialect
// ---------------------------------------------------------------------------

fn labels(pairs: &[(&str, &str)]) -> Value {
    Value::string_map(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
}

/// Alert data as Prometheus' rule manager builds it: dot and the four variables.
fn alert_data(l: &[(&str, &str)], value: f64) -> Data<'static> {
    let mut dot = BTreeMap::new();
    dot.insert("Labels".to_string(), labels(l));
    dot.insert("ExternalLabels".to_string(), labels(&[("cluster", "eu1")]));
    dot.insert("ExternalURL".to_string(), Value::Str("http://lumen:9700/prefix".into()));
    dot.insert("Value".to_string(), Value::Float(value));
    Data {
        dot: Value::Map(dot),
        vars: vec![
            ("$labels".into(), labels(l)),
            ("$externalLabels".into(), labels(&[("cluster", "eu1")])),
            ("$externalURL".into(), Value::Str("http://lumen:9700/prefix".into())),
            ("$value".into(), Value::Float(value)),
        ],
        host: None,
        now_ms: 1_353_755_652_000,
        external_url: "http://lumen:9700/prefix".into(),
        path_prefix: "/prefix".into(),
    }
}

fn p_with(src: &str, data: &Data) -> Result<String, String> {
    Template::parse_prometheus(src).unwrap_or_else(|e| panic!("parse {src:?}: {e}")).execute(data)
}

fn p(src: &str) -> String {
    let data = alert_data(&[("instance", "host1:9100"), ("job", "node"), ("severity", "page")], 11.0);
    p_with(src, &data).unwrap_or_else(|e| panic!("execute {src:?}: {e}"))
}

fn p_err(src: &str) -> String {
    p_with(src, &alert_data(&[], 0.0)).expect_err(src)
}

struct FakeHost(Vec<Value>);

impl Host for FakeHost {
    fn query(&self, q: &str) -> Result<Vec<Value>, String> {
        match q {
            "fail" => Err("query failed".into()),
            "none" => Ok(Vec::new()),
            _ => Ok(self.0.clone()),
        }
    }
}

fn id_samples() -> FakeHost {
    let s = |id: &str, v: f64| Value::sample([("id".to_string(), id.to_string())], v);
    FakeHost(vec![s("103", 3.0), s("101", 1.0), s("102", 2.0)])
}

#[test]
fn prometheus_compliance_outputs() {
    assert_eq!(p("{{ humanize 1048576 }}"), "1.049M");
    assert_eq!(p("{{ humanize1024 1048576 }}"), "1Mi");
    assert_eq!(p("{{ humanizeDuration 135.3563 }}"), "2m 15s");
    assert_eq!(p("{{ humanizePercentage 0.959 }}"), "95.9%");
    assert_eq!(p("{{ humanizeTimestamp 1643114203 }}"), "2022-01-25 12:36:43 +0000 UTC");
    assert_eq!(p(r#"{{ title "this part" }}"#), "This Part");
    assert_eq!(p(r#"{{ stripPort "[::1]:6006" }}"#), "::1");
    assert_eq!(p(r#"{{ parseDuration "2h10m15s" }}"#), "7815");
    assert_eq!(
        p(r#"{{define "x"}}Args are: {{.arg0}} {{.arg1}} {{.arg2}}.{{end}}{{template "x" args "foo" "bar" 99}}"#),
        "Args are: foo bar 99."
    );
    let host = id_samples();
    let data = Data { host: Some(&host), ..alert_data(&[], 0.0) };
    let src = r#"{{ with query "q" }}first_id:{{ . | sortByLabel "id" | first | label "id" }},{{ range sortByLabel "id" . }}{{ .Labels.id }}:{{ .Value }},{{ end }}{{ end }}"#;
    assert_eq!(p_with(src, &data).unwrap(), "first_id:101,101:1,102:2,103:3,");
}

#[test]
fn prometheus_alert_data() {
    assert_eq!(p("{{$value}} {{.Value}}"), "11 11");
    assert_eq!(p("{{ $labels.instance }} {{ .Labels.job }} {{ $externalLabels.cluster }}"), "host1:9100 node eu1");
    assert_eq!(p("{{ $externalURL }} {{ .ExternalURL }}"), "http://lumen:9700/prefix http://lumen:9700/prefix");
    assert_eq!(p("{{ if gt $value 80.0 }}high{{ else }}low{{ end }}"), "low");
    assert_eq!(p("{{ if gt $value 10 }}high{{ else }}low{{ end }}"), "high");
    assert_eq!(p(r#"{{ printf "%.2f" $value }}"#), "11.00");
    assert_eq!(p("{{ range $k, $v := $labels }}{{$k}}={{$v}} {{end}}"), "instance=host1:9100 job=node severity=page ");
    assert_eq!(p("{{ range $labels }}{{.}},{{end}}"), "host1:9100,node,page,");
    // A missing label is empty (Prometheus reads label maps with missingkey=zero); a missing field
    // of other data is <no value>.
    assert_eq!(p("[{{ $labels.nope }}] [{{ .Nope }}] [{{ .Nope.deeper }}]"), "[] [<no value>] [<no value>]");
    assert_eq!(p(r#"{{ index $labels "job" }}|{{ index $labels "nope" }}|{{ len $labels }}"#), "node||3");
    assert_eq!(p(r#"{{ if eq $labels.severity "page" }}P{{ end }}"#), "P");
    assert_eq!(p(r#"{{ $labels }}"#), "map[instance:host1:9100 job:node severity:page]");
    assert_eq!(
        p(r#"{{ printf "%v %s" $labels (args 1 "a") }}"#),
        "map[instance:host1:9100 job:node severity:page] map[arg0:%!s(int=1) arg1:a]"
    );
    assert_eq!(p(r#"{{ print (args 1.5 true) }}"#), "map[arg0:1.5 arg1:true]");
    assert!(p_err(r#"{{ if eq "1" 1 }}x{{ end }}"#).contains("incompatible types for comparison"));
}

#[test]
fn prometheus_variables_and_scopes() {
    assert_eq!(p("{{ $x := 1 }}{{ if true }}{{ $x = 2 }}{{ $y := 3 }}{{ $y }}{{ end }}{{ $x }}"), "32");
    assert_eq!(p("{{ with $x := $labels.job }}{{ $x }}/{{ . }}{{ end }}"), "node/node");
    assert_eq!(p("{{ range $i, $e := args 5 6 }}{{ $i }}:{{ $e }};{{ end }}"), "arg0:5;arg1:6;");
    assert_eq!(p("{{ range $e := args }}x{{ else }}empty{{ end }}"), "empty");
    assert_eq!(
        p("{{ range 5 }}{{ if eq . 1 }}{{ continue }}{{ end }}{{ if eq . 3 }}{{ break }}{{ end }}{{ . }}{{ end }}"),
        "02"
    );
    assert_eq!(p("{{ with .Nope }}x{{ else with $labels.job }}{{ . }}{{ else }}none{{ end }}"), "node");
    assert_eq!(
        p(r#"{{ define "t" }}{{ $.arg0 }}{{ end }}{{ range args "a" "b" }}{{ template "t" args . }}{{ end }}"#),
        "ab"
    );
    assert_eq!(p(r#"{{ define "a" }}x{{ end }}{{ $name := "a" }}{{ tmpl $name . }}"#), "x");
    assert_eq!(p("{{ (args 1 2).arg1 }}"), "2");
    for bad in [
        "{{ $nope }}",
        "{{ if true }}{{ $x := 1 }}{{ end }}{{ $x }}",
        r#"{{ define "t" }}{{ $labels }}{{ end }}"#,
        "{{ $y = 1 }}",
        "{{ nosuch 1 }}",
        "{{ ToUpper \"x\" }}",
    ] {
        assert!(Template::parse_prometheus(bad).is_err(), "{bad:?} should fail");
    }
}

#[test]
fn prometheus_functions() {
    assert_eq!(p(r#"{{ range args 0 1 1234567.0 0.12 }}{{ humanize . }}:{{ end }}"#), "0:1:1.235M:120m:");
    assert_eq!(p(r#"{{ humanize "1234567.0" }} {{ humanize -1 }}"#), "1.235M -1");
    assert!(p_err(r#"{{ humanize "one" }}"#).contains(r#"strconv.ParseFloat: parsing "one": invalid syntax"#));
    assert_eq!(p(r#"{{ range args 0 1 1048576.0 0.12 }}{{ humanize1024 . }}:{{ end }}"#), "0:1:1Mi:0.12:");
    assert_eq!(
        p(r#"{{ range args 0 1 60 3600 86400 90000 -183845 899.99 }}{{ humanizeDuration . }}:{{ end }}"#),
        "0s:1s:1m 0s:1h 0m 0s:1d 0h 0m 0s:1d 1h 0m 0s:-2d 3h 4m 5s:14m 59s:"
    );
    assert_eq!(
        p(r#"{{ range args 0.1 0.0001 0.12345 60.1 60.5 1.2345 12.345 }}{{ humanizeDuration . }}:{{ end }}"#),
        "100ms:100us:123.5ms:1m 0s:1m 0s:1.234s:12.35s:"
    );
    assert_eq!(
        p(
            r#"{{ range args "+Inf" "-Inf" "NaN" }}{{ humanize . }}:{{ humanize1024 . }}:{{ humanizeDuration . }}:{{ humanizeTimestamp . }}:{{ end }}"#
        ),
        "+Inf:+Inf:+Inf:+Inf:-Inf:-Inf:-Inf:-Inf:NaN:NaN:NaN:NaN:"
    );
    assert_eq!(
        p("{{ -0.22222 | humanizePercentage }}:{{ 0.0 | humanizePercentage }}:{{ 0.1234567 | humanizePercentage }}"),
        "-22.22%:0%:12.35%"
    );
    assert_eq!(p("{{ 1435065584.128 | humanizeTimestamp }}"), "2015-06-23 13:19:44.128 +0000 UTC");
    assert_eq!(
        p("{{ humanizeTimestamp 9223372036 }} {{ humanizeTimestamp -1 }}"),
        "2262-04-11 23:47:16 +0000 UTC 1969-12-31 23:59:59 +0000 UTC"
    );
    assert!(p_err("{{ humanizeTimestamp 9223372037 }}").contains("overflows int64"));
    assert_eq!(p(r#"{{ (1435065584.128 | toTime).Format "2006" }}"#), "2015");
    assert_eq!(
        p(
            r#"{{ ("1800" | toDuration).String }} {{ 1.5 | toDuration }} {{ 0.0005 | toDuration }} {{ 3723.5 | toDuration }}"#
        ),
        "30m0s 1.5s 500µs 1h2m3.5s"
    );
    assert_eq!(p("{{ now }}"), "1.353755652e+09");
    assert_eq!(p(r#"{{ (now | toTime).Format "Mon Jan 2 15:04:05 2006" }}"#), "Sat Nov 24 11:14:12 2012");
    assert_eq!(p(r#"{{ ("-30m" | parseDuration | toDuration | (now | toTime).Add).UnixMilli }}"#), "1353753852000");
    assert_eq!(
        p(r#"{{ printf "%0.2f" (parseDuration "1h2m10ms") }} {{ parseDuration "1w1d" }} {{ parseDuration "0" }}"#),
        "3720.01 691200 0"
    );
    assert!(p_err(r#"{{ parseDuration "1m1h" }}"#).contains("not a valid duration string"));
    assert_eq!(
        p(r#"{{ "aa bb CC" | title }} {{ "aa bb CC" | toUpper }} {{ "aA bB CC" | toLower }}"#),
        "Aa Bb CC AA BB CC aa bb cc"
    );
    assert_eq!(p(r#"{{ match "a+" "aa" }} {{ match "a+" "b" }}"#), "true false");
    assert!(p_err(r#"{{ match "(" "b" }}"#).contains("error calling match"));
    assert_eq!(
        p(
            r#"{{ reReplaceAll "(a)b" "x$1" "ab" }} {{ reReplaceAll "(a)b" "${1}x" "ab" }} {{ reReplaceAll "(a)b" "$1x" "ab" }}"#
        ),
        "xa ax "
    );
    assert_eq!(
        p(r#"{{ graphLink "up == 0" }} {{ tableLink "up" }}"#),
        "/graph?g0.expr=up+%3D%3D+0&g0.tab=0 /graph?g0.expr=up&g0.tab=1"
    );
    assert_eq!(p("{{ pathPrefix }} {{ externalURL }}"), "/prefix http://lumen:9700/prefix");
    assert_eq!(p(r#"{{ urlQueryEscape "a b&c" }} {{ safeHtml "<b>" }} {{ html "<b>" }}"#), "a+b%26c <b> &lt;b&gt;");
    for (input, want) in [
        ("foo.example.com", "foo.example.com"),
        ("foo.example.com:12345", "foo.example.com"),
        ("192.0.2.1:12345", "192.0.2.1"),
        ("2001:0DB8::1", "2001:0DB8::1"),
        ("[2001:0DB8::1]:12345", "2001:0DB8::1"),
        ("[2001:0DB8::1]::12345", "[2001:0DB8::1]::12345"),
    ] {
        assert_eq!(p(&format!("{{{{ stripPort {input:?} }}}}")), want, "{input}");
    }
    for (input, want) in [
        ("foo.example.com", "foo"),
        ("foo.example.com:12345", "foo:12345"),
        ("192.0.2.1:12345", "192.0.2.1:12345"),
        ("[2001:0DB8::1]:12345", "[2001:0DB8::1]:12345"),
        ("localhost", "localhost"),
    ] {
        assert_eq!(p(&format!("{{{{ stripDomain {input:?} }}}}")), want, "{input}");
    }
    assert_eq!(p("{{ call 1 }}"), "");
    assert_eq!(p(r#"{{ slice "abcdef" 1 3 }} {{ index (args "x" "y") "arg1" }} {{ len "abc" }}"#), "bc y 3");
}

#[test]
fn prometheus_queries() {
    let host = id_samples();
    let data = Data { host: Some(&host), ..alert_data(&[], 0.0) };
    let run = |src: &str| p_with(src, &data);
    assert_eq!(run(r#"{{ query "q" | first | value }}"#).unwrap(), "3");
    assert_eq!(run(r#"{{ query "q" | first | strvalue }}|{{ query "q" | first | label "nope" }}"#).unwrap(), "|");
    assert_eq!(run(r#"{{ $x := query "q" | first }}{{ $x.Labels.id }}[{{ $x.Labels.foo }}]"#).unwrap(), "103[]");
    assert_eq!(run(r#"{{ len (query "q") }}"#).unwrap(), "3");
    let e = run(r#"{{ query "none" | first }}"#).unwrap_err();
    assert!(e.contains("first() called on vector with no elements"), "{e}");
    assert!(run(r#"{{ query "fail" }}"#).unwrap_err().contains("query failed"));
    assert!(run(r#"{{ (query "none").banana }}"#).unwrap_err().contains("can't evaluate field banana"));
    assert!(p_err(r#"{{ query "q" }}"#).contains("no query engine"));
}

#[test]
fn float_printing() {
    for (v, want) in [
        (11.0, "11"),
        (1.5, "1.5"),
        (1e21, "1e+21"),
        (1234567.0, "1.234567e+06"),
        (123456.0, "123456"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (-0.0, "-0"),
        (f64::INFINITY, "+Inf"),
        (f64::NAN, "NaN"),
    ] {
        assert_eq!(Value::Float(v).to_string(), want, "{v}");
    }
    assert_eq!(Value::List(vec![Value::Int(1), Value::Str("a".into()), Value::Nil]).to_string(), "[1 a <nil>]");
    assert_eq!(Value::Nil.to_string(), "<no value>");
}

#[test]
fn limits() {
    let e = p_err(r#"{{ define "r" }}x{{ template "r" . }}{{ end }}{{ template "r" . }}"#);
    assert!(e.contains("maximum template depth"), "{e}");
    let e = p_err(r#"{{ define "r" }}{{ tmpl "r" . }}{{ end }}{{ tmpl "r" . }}"#);
    assert!(e.contains("maximum template depth"), "{e}");
    let e = p_err(r#"{{ range 2000000 }}{{ end }}"#);
    assert!(e.contains("steps"), "{e}");
    let e = p_err(r#"{{ range 200000 }}0123456789{{ end }}"#);
    assert!(e.contains("output exceeds"), "{e}");
    let e = p_err(r#"{{ $s := "xxxxxxxxxxxxxxxx" }}{{ range 20 }}{{ $s = printf "%s%s" $s $s }}{{ end }}{{ len $s }}"#);
    assert!(e.contains("exceeds the limit"), "{e}");
    let ok = p(&format!("{{{{ range {} }}}}xx{{{{ end }}}}", MAX_OUTPUT_BYTES / 4));
    assert_eq!(ok.len(), MAX_OUTPUT_BYTES / 2);
    let deep = format!("{}1{}", "{{ if true }}".repeat(150), "{{ end }}".repeat(150));
    assert!(Template::parse_prometheus(&deep).unwrap_err().contains("nested deeper"));
    let parens = format!("{{{{ {}1{} }}}}", "(".repeat(150), ")".repeat(150));
    assert!(Template::parse(&parens).unwrap_err().contains("nested deeper"));
    // As deep as the parser allows, inside templates called as deep as allowed.
    let body = format!("{}{{{{ template \"r\" . }}}}{}", "{{ with 1 }}".repeat(99), "{{ end }}".repeat(99));
    let e = p_err(&format!("{{{{ define \"r\" }}}}{body}{{{{ end }}}}{{{{ template \"r\" . }}}}"));
    assert!(e.contains("deeper") || e.contains("depth"), "{e}");
}
