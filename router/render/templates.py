"""The jinja2 templates of llm-fleet's configs, loaded from the checkout.

Templates live with their component (``nginx/``, ``prometheus/``,
``deploy/``) and hold no logic beyond loops. jinja2 runs with
StrictUndefined, so a missing value is a render error, never an empty string
in a config.
"""

from __future__ import annotations

import functools

import jinja2

from router import REPO_ROOT
from router.errors import EnvironmentError_


# One environment per delimiter pair, so each template is parsed once per
# process (jinja2 caches compiled templates per environment and reloads one
# whose file changed); a new environment per render re-parsed every template on
# every weight change.
@functools.cache
def _environment(variable_delimiters: tuple[str, str]) -> jinja2.Environment:
    start, end = variable_delimiters
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(REPO_ROOT)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
        variable_start_string=start,
        variable_end_string=end,
    )


def template(name: str, variable_delimiters: tuple[str, str] = ("{{", "}}")) -> jinja2.Template:
    try:
        return _environment(variable_delimiters).get_template(name)
    except jinja2.TemplateNotFound as exc:
        raise EnvironmentError_(
            f"template {name} not found under {REPO_ROOT}",
            hint="run fleet from a checkout of llm-fleet installed with `pip install -e .`",
        ) from exc
