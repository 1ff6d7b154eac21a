"""JUnit XML, written once for the report and the gate: suites of cases, each passed, failed or skipped.

Text from the data (cohort, route and metric names, messages) is cleaned of the characters XML 1.0
cannot hold, so a hostile name cannot make the file unparseable.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Literal, Sequence

# Characters XML 1.0 forbids (C0 controls but tab/LF/CR, surrogates, U+FFFE/U+FFFF).
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_text(value: object) -> str:
    """`value` as text XML can hold: forbidden characters become U+FFFD."""
    return _XML_ILLEGAL.sub("\ufffd", str(value))


@dataclass
class Case:
    classname: str
    name: str
    outcome: Literal["passed", "failed", "skipped"]
    message: str = ""   # the failure's or skip's message attribute
    text: str = ""      # the failure's body
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
                              skipped=str(sum(c.outcome == "skipped" for c in s.cases)), errors="0")
        for c in s.cases:
            case = ET.SubElement(suite, "testcase", classname=xml_text(c.classname), name=xml_text(c.name))
            if c.outcome == "failed":
                ET.SubElement(case, "failure", message=xml_text(c.message), type=c.failure_type).text = xml_text(c.text)
            elif c.outcome == "skipped":
                ET.SubElement(case, "skipped", message=xml_text(c.message))
            ET.SubElement(case, "system-out").text = xml_text(c.output)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
