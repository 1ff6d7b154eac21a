"""JUnit XML, written once for the report and the gate: suites of cases, each passed, failed or skipped.

Text from the data (cohort, route and metric names, messages) goes through escape.xml: the
characters XML 1.0 cannot hold (and ANSI escapes, which CI log viewers would interpret) become
visible escapes such as \x1b, so a hostile name cannot make the file unparseable.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Literal, Sequence

from harness.report.render.escape import xml as xml_text


@dataclass
class Case:
    classname: str
    name: str
    outcome: Literal["passed", "failed", "skipped", "error"]
    message: str = ""   # the failure's, error's or skip's message attribute
    text: str = ""      # the failure's or error's body
    output: str = ""    # system-out
    failure_type: str = "regression"


@dataclass
class Suite:
    name: str
    cases: list[Case] = field(default_factory=list)


def junit_xml(name: str, suites: Sequence[Suite]) -> str:
    root = ET.Element("testsuites", name=xml_text(name))
    for s in suites:
        suite = ET.SubElement(root, "testsuite", name=xml_text(s.name), tests=str(len(s.cases)),
                              failures=str(sum(c.outcome == "failed" for c in s.cases)),
                              skipped=str(sum(c.outcome == "skipped" for c in s.cases)),
                              errors=str(sum(c.outcome == "error" for c in s.cases)))
        for c in s.cases:
            case = ET.SubElement(suite, "testcase", classname=xml_text(c.classname), name=xml_text(c.name))
            if c.outcome in ("failed", "error"):
                tag = "failure" if c.outcome == "failed" else "error"
                ET.SubElement(case, tag, message=xml_text(c.message), type=c.failure_type).text = xml_text(c.text)
            elif c.outcome == "skipped":
                ET.SubElement(case, "skipped", message=xml_text(c.message))
            ET.SubElement(case, "system-out").text = xml_text(c.output)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
