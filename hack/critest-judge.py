#!/usr/bin/env python3
"""Reads critest's JUnit report and judges it against the expected-failure list.

  report JUNIT                      summary and each failure's first error line
  failed JUNIT | passed JUNIT       testcase names, one a line
  names EXPECTED                    the names the expected-failure list holds
  focus NAME                        a --ginkgo.focus regex that selects that spec alone
  selftest                          checks this judge on made-up reports
  verdict JUNIT EXPECTED RESCUED [--partial]
                                    exit 1 on a failure not listed (and not rescued by a
                                    re-run), on a listed spec that passed, and (unless
                                    --partial) on a listed spec the report does not hold

The expected list holds one spec a line, its full JUnit testcase name, then `  # reason`.
"""
import re
import sys
import xml.etree.ElementTree as ET

FAILED = ("failed", "timedout", "panicked", "interrupted", "aborted")


def cases(junit):
    """(name, status, first error line) for every testcase but ginkgo's suite nodes."""
    out = []
    for tc in ET.parse(junit).getroot().iter("testcase"):
        name = tc.get("name", "")
        # Ginkgo reports BeforeSuite/AfterSuite/ReportAfterSuite nodes as testcases.
        if re.match(r"^\[(BeforeSuite|AfterSuite|SynchronizedBeforeSuite|"
                    r"SynchronizedAfterSuite|ReportAfterSuite|ReportBeforeSuite)\]", name):
            if tc.get("status") in FAILED:
                out.append((name, "failed", first_error(tc)))
            continue
        status = tc.get("status")
        if status is None:
            if tc.find("failure") is not None or tc.find("error") is not None:
                status = "failed"
            elif tc.find("skipped") is not None:
                status = "skipped"
            else:
                status = "passed"
        out.append((name, status, first_error(tc) if status in FAILED else ""))
    return out


def first_error(tc):
    for tag in ("failure", "error"):
        el = tc.find(tag)
        if el is not None:
            text = (el.get("message") or el.text or "").strip()
            for line in text.splitlines():
                line = line.strip()
                if line:
                    return line[:300]
    return ""


def expected(path):
    names = {}
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            name, sep, reason = line.rpartition("  # ")
            if not sep:
                sys.exit(f"{path}: no '  # reason' on line: {line}")
            names[name.strip()] = reason.strip()
    return names


def selftest():
    """The judge must fail the run on each kind of surprise, or the gate means nothing."""
    import os
    import subprocess
    import tempfile

    def junit(cases_xml):
        return ('<?xml version="1.0"?><testsuites><testsuite name="critest">'
                '<testcase name="[BeforeSuite]" status="passed"></testcase>'
                + cases_xml + "</testsuite></testsuites>")

    def case(name, status):
        body = {"failed": '<failure message="boom: first line&#10;second">x</failure>',
                "skipped": "<skipped></skipped>", "passed": ""}[status]
        return f'<testcase name="{name}" status="{status}">{body}</testcase>'

    expected_list = "# comment\n[It] a spec [Conformance]  # streaming\n"
    scenarios = [
        # (cases, rescued, should pass)
        ([("[It] a spec [Conformance]", "failed"), ("[It] b", "passed")], [], True),
        ([("[It] a spec [Conformance]", "failed"), ("[It] b", "failed")], [], False),
        ([("[It] a spec [Conformance]", "failed"), ("[It] b", "failed")], ["[It] b"], True),
        ([("[It] a spec [Conformance]", "passed"), ("[It] b", "passed")], [], False),
        ([("[It] b", "passed")], [], False),
        ([("[It] a spec [Conformance]", "skipped")], [], True),
    ]
    with tempfile.TemporaryDirectory() as d:
        exp = os.path.join(d, "expected.txt")
        with open(exp, "w") as f:
            f.write(expected_list)
        for i, (cs, rescued, ok) in enumerate(scenarios):
            rep, res = os.path.join(d, f"r{i}.xml"), os.path.join(d, f"s{i}.txt")
            with open(rep, "w") as f:
                f.write(junit("".join(case(n, s) for n, s in cs)))
            with open(res, "w") as f:
                f.write("\n".join(rescued))
            rc = subprocess.run([sys.executable, __file__, "verdict", rep, exp, res],
                                capture_output=True).returncode
            assert (rc == 0) == ok, f"scenario {i}: exit {rc}, expected ok={ok}"
        rep = os.path.join(d, "r0.xml")
        assert [c[0] for c in cases(rep) if c[1] in FAILED] == ["[It] a spec [Conformance]"]
        assert cases(rep)[0][2] == "boom: first line"
    focus = subprocess.run([sys.executable, __file__, "focus", "[It] a.b [x] (y)"],
                           capture_output=True, text=True).stdout.strip()
    assert focus == r"a\.b \[x\] \(y\)$", focus
    print("critest judge: self-test passed")


def main():
    if len(sys.argv) == 2 and sys.argv[1] == "selftest":
        return selftest()
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    cmd, arg = sys.argv[1], sys.argv[2]
    if cmd == "report":
        cs = cases(arg)
        counts = {s: sum(1 for c in cs if c[1] == s) for s in ("passed", "skipped")}
        counts["failed"] = sum(1 for c in cs if c[1] in FAILED)
        print(f"critest: {counts['passed']} passed, {counts['failed']} failed, "
              f"{counts['skipped']} skipped")
        for name, status, err in cs:
            if status in FAILED:
                print(f"  FAILED {name}\n         {err}")
    elif cmd in ("failed", "passed"):
        want = FAILED if cmd == "failed" else ("passed",)
        for name, status, _ in cases(arg):
            if status in want:
                print(name)
    elif cmd == "names":
        for name in expected(arg):
            print(name)
    elif cmd == "focus":
        # Ginkgo matches --focus (Go RE2) against the spec's full text, which ends as the
        # JUnit name does; RE2 rejects Python's escapes of plain characters.
        text = re.sub(r"^\[It\]\s*", "", arg)
        print(re.sub(r"([\\.^$|?*+()\[\]{}])", r"\\\1", text) + "$")
    elif cmd == "verdict":
        exp = expected(sys.argv[3])
        with open(sys.argv[4], encoding="utf-8") as f:
            rescued = {line.strip() for line in f if line.strip()}
        partial = "--partial" in sys.argv[5:]
        cs = cases(arg)
        seen = {c[0] for c in cs}
        bad = []
        for name, status, err in cs:
            if status in FAILED and name not in exp and name not in rescued:
                bad.append(f"unexpected failure: {name}\n    {err}")
            if status == "passed" and name in exp:
                bad.append(f"unexpected pass (remove it from the expected list): {name}")
        if not partial:
            for name in exp:
                if name not in seen:
                    bad.append(f"listed but not in the report (stale name?): {name}")
        for b in bad:
            print("critest: " + b)
        if bad:
            sys.exit(1)
        print(f"critest: verdict OK ({len(exp)} expected failures, "
              f"{len(rescued)} saved by a re-run)")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
