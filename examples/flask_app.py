"""A Flask application that makes thumbnails of uploaded photos with imageproc worker threads.

    flask --app 'examples/flask_app.py:create_app()' run               # development server
    gunicorn -w 4 --chdir examples 'flask_app:create_app()'           # several processes

``create_app`` builds one Processor per process and starts its worker threads; they are stopped
at interpreter exit, letting tasks in flight finish. Several processes (gunicorn's ``-w``) are
fine: the queue lives in the database, so any process's workers take any process's uploads.
Settings come from ``IMAGEPROC_DATABASE_URL``, ``IMAGEPROC_STORAGE_URL`` and
``IMAGEPROC_WORKERS`` (``N`` or ``MIN:MAX``), as ``imageproc serve`` reads them. Try it::

    curl -F image=@cat.jpg http://127.0.0.1:5000/photos            # 202, Location: /photos/<id>
    curl http://127.0.0.1:5000/photos/<id>                         # status, sizes, variant URLs
    curl -o thumb.webp http://127.0.0.1:5000/photos/<id>/thumb     # one variant
"""

from __future__ import annotations

import atexit
import os

from flask import Flask, Response, abort, jsonify, request, url_for

from imageproc import InvalidImage, Processor, TaskNotFound, TaskStatus
from imageproc.config import parse_workers

PRESETS = {"photo": "thumb=fit:256x256,webp:q80;large=fit:1600x1600,jpeg:q85"}
#: Seconds the workers get at exit to finish what they hold (gunicorn's graceful_timeout is 30).
STOP_TIMEOUT = 20.0


def create_app(
    database_url: str | None = None,
    storage_url: str | None = None,
    workers: int | tuple[int, int] | None = None,
) -> Flask:
    """The Flask app, with a Processor of its own whose workers run as background threads."""
    env = os.environ
    processor = Processor.from_urls(
        database_url or env.get("IMAGEPROC_DATABASE_URL", "sqlite:///imageproc.db"),
        storage_url or env.get("IMAGEPROC_STORAGE_URL", "file://imageproc-data"),
        presets=PRESETS,
    )
    processor.start(workers=workers or parse_workers(env.get("IMAGEPROC_WORKERS", "2")))
    atexit.register(shutdown, processor)

    app = Flask(__name__)
    app.extensions["imageproc"] = processor

    @app.post("/photos")
    def upload() -> tuple[Response, int, dict[str, str]] | tuple[Response, int]:
        image = request.files.get("image")
        if image is None:
            return jsonify(error="send the image in the form field 'image'"), 400
        try:
            task = processor.submit(image.stream, "photo")
        except InvalidImage as error:
            return jsonify(error=str(error)), 415
        location = url_for("photo", task_id=task.id)
        return jsonify(id=task.id, status=str(task.status)), 202, {"Location": location}

    @app.get("/photos/<task_id>")
    def photo(task_id: str) -> Response:
        try:
            task = processor.get(task_id)
        except TaskNotFound:
            abort(404)
        outputs = [
            {
                "name": output.name,
                "format": output.format,
                "width": output.width,
                "height": output.height,
                "url": url_for("variant", task_id=task.id, name=output.name),
            }
            for output in task.outputs
        ]
        return jsonify(id=task.id, status=str(task.status), outputs=outputs)

    @app.get("/photos/<task_id>/<name>")
    def variant(task_id: str, name: str) -> Response:
        try:
            task = processor.get(task_id)
        except TaskNotFound:
            abort(404)
        if task.status != TaskStatus.SUCCEEDED:
            abort(404)
        # Only the keys the task recorded: never a key taken from the request.
        output = next((o for o in task.outputs if o.name == name), None)
        if output is None:
            abort(404)
        info = processor.storage.stat(output.key)
        return Response(processor.read(output.key), mimetype=info.content_type)

    return app


def shutdown(processor: Processor) -> None:
    """Stop claiming, let tasks in flight finish (then give back the rest), close connections."""
    processor.stop(STOP_TIMEOUT)
    processor.close()
