"""docs/openapi.yaml is valid YAML and documents every route the server has
(each {"METHOD", "/path"} row of a route table in src/), with its method."""
import pathlib
import re

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]


def routes():
    found = set()
    for src in (ROOT / "src").rglob("*.c"):
        for method, path in re.findall(r'\{"(GET|POST|PUT|DELETE)",\s*"(/[^"]*)"', src.read_text()):
            found.add((method.lower(), path))
    return found


def test_openapi_documents_every_route():
    doc = yaml.safe_load((ROOT / "docs/openapi.yaml").read_text())
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    found = routes()
    assert len(found) >= 38  # the regex still finds the route tables
    missing = sorted(f"{m.upper()} {p}" for m, p in found if m not in paths.get(p, {}))
    assert not missing, missing
    extra = sorted(f"{m.upper()} {p}" for p, ops in paths.items() for m in ops
                   if (m, p) not in found)
    assert not extra, extra


def route_queries():
    """{(method, path): {query parameter, ...}} from the route tables: each
    row's last member names a NULL-terminated list of its file (or NULL)."""
    found = {}
    for src in (ROOT / "src").rglob("*.c"):
        text = src.read_text()
        lists = {name: set(re.findall(r'"([^"]+)"', body)) for name, body in
                 re.findall(r'static const char \*const (\w+)\[\] = \{([^}]*)\};', text)}
        for method, path, query in re.findall(
                r'\{"(GET|POST|PUT|DELETE)",\s*"(/[^"]*)",\s*\w+,\s*\w+,\s*(?:true|false),'
                r'\s*(\w+)\}', text):
            found[(method.lower(), path)] = set() if query == "NULL" else lists[query]
    return found


def documented_queries(doc, op):
    names = set()
    for p in op.get("parameters", []):
        if "$ref" in p:
            p = doc["components"]["parameters"][p["$ref"].rsplit("/", 1)[1]]
        if p["in"] == "query":
            names.add(p["name"])
    return names


def test_openapi_documents_the_query_parameters_each_route_takes():
    # The server refuses any other (400), so the lists must agree both ways.
    doc = yaml.safe_load((ROOT / "docs/openapi.yaml").read_text())
    queries = route_queries()
    assert set(queries) == routes()  # every route row declares its list
    assert sum(1 for q in queries.values() if q) >= 10  # the regex still finds the lists
    wrong = {f"{m.upper()} {p}": (sorted(q), sorted(documented_queries(doc, doc["paths"][p][m])))
             for (m, p), q in queries.items() if q != documented_queries(doc, doc["paths"][p][m])}
    assert not wrong, wrong
