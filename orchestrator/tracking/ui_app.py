"""``mlflow ui --app-name orchestrator``: MLflow's own server and UI, opening a search's experiment
on its runs table, best FID first.

MLflow 3.17's UI chooses an experiment's first page from a switch of its own ("GenAI" or "Model
training", kept in the browser and GenAI until a user flips it), not from the experiment's
``mlflow.experimentKind`` tag: clicked from the experiment list, a search opened on an empty trace
overview. This app is MLflow's server (registered under the ``mlflow.app`` entry point, as MLflow's
own ``basic-auth`` is) with a few lines of script in its page: the switch starts at "Model
training" until the user chooses, and a runs table with no sort of its own is sorted as the
experiment's ``orchestrator.order_by`` tag says (the search sets it: its FID, best first).
"""

from __future__ import annotations

import json
from typing import Any

ORDER_TAG = "orchestrator.order_by"  # on a search's experiment: {"orderByKey": ..., "orderByAsc": ...}

# Ran before MLflow's own scripts. The UI keeps its switch in localStorage under
# "mlflow.workflowType_v1" as a JSON string; a sort in the runs page's address wins over the one
# it remembers, and the router writes the address without a full load, so the address is watched
SCRIPT = """<script>(function () {
  var KEY = "mlflow.workflowType_v1", TAG = __TAG__, done = {};
  var DEFAULT = /orderByKey=attributes\\.start_time(&|$)/;
  try { if (!localStorage.getItem(KEY)) localStorage.setItem(KEY, JSON.stringify("machine_learning")); }
  catch (e) {}
  function sortRuns() {
    var found = location.hash.match(/^#\\/experiments\\/(\\d+)\\/runs(\\?.*)?$/), id = found && found[1];
    if (!found || done[id]) return;
    done[id] = true;  // once a page load: what the user sorts by next is theirs
    var query = found[2] || "";
    if (/orderByKey=/.test(query) && !DEFAULT.test(query)) return;  // an address with a sort of its own
    fetch("ajax-api/2.0/mlflow/experiments/get?experiment_id=" + id)
      .then(function (r) { return r.json(); })
      .then(function (got) {
        var tag = ((got.experiment || {}).tags || []).filter(function (t) { return t.key === TAG; })[0];
        var now = location.hash.match(/^#\\/experiments\\/(\\d+)\\/runs(\\?.*)?$/);
        if (!tag || !now || now[1] !== id) return;
        var order = JSON.parse(tag.value), params = new URLSearchParams((now[2] || "").slice(1));
        params.set("orderByKey", order.orderByKey);
        params.set("orderByAsc", String(order.orderByAsc));
        location.replace("#/experiments/" + id + "/runs?" + params.toString());
      })
      .catch(function () {});
  }
  setInterval(sortRuns, 250);
})();</script>""".replace("__TAG__", json.dumps(ORDER_TAG))


def order_tag(metric: str, ascending: bool) -> str:
    """The value of ``ORDER_TAG`` that sorts the runs table on ``metric``."""
    return json.dumps({"orderByKey": f"metrics.`{metric}`", "orderByAsc": ascending})


def create_app() -> Any:
    """MLflow's server app with the script in its page; an ASGI app under uvicorn (MLflow's default
    server), the Flask app under waitress or gunicorn, as MLflow's basic-auth app does."""
    from mlflow.environment_variables import _MLFLOW_SGI_NAME
    from mlflow.server import app

    app.after_request(_with_script)
    if _MLFLOW_SGI_NAME.get() == "uvicorn":
        from mlflow.server.fastapi_app import create_fastapi_app

        return create_fastapi_app(app)
    return app


def _with_script(response: Any) -> Any:
    if response.mimetype != "text/html" or response.status_code != 200:
        return response
    response.direct_passthrough = False  # a file sent from disk: read it to change it
    page = response.get_data(as_text=True)
    if "<head>" in page and SCRIPT not in page:
        response.set_data(page.replace("<head>", "<head>" + SCRIPT, 1))
    return response
