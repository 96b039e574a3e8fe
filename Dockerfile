# The inspection service (python -m steel_defect.deploy.serve) on CPU, as a non-root user, the model mounted read-only.
#
#   docker build -t steel-defect .
#   docker run -d --name steel-defect -p 8000:8000 --read-only --tmpfs /tmp \
#       -v /srv/steel-defect/model:/model:ro -e STEEL_DEFECT_API_KEY="$(cat /etc/steel-defect/key)" steel-defect
#
# /model holds model.ckpt (or give another file: ... steel-defect ckpt=/model/best.onnx); a thresholds.yaml
# beside it is used (thresholds=auto). host=0.0.0.0 inside the container needs the API key: without one the
# service refuses to start and says why. docs/DEPLOY.md has the details.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    NO_ALBUMENTATIONS_UPDATE=1 \
    HF_HUB_OFFLINE=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib

WORKDIR /opt/steel-defect
COPY pyproject.toml README.md ./
COPY steel_defect ./steel_defect
# CPU-only torch first (no CUDA libraries in the image), then the package with the service's extras.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch torchvision \
    && pip install ".[serve,onnx]" \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin steel

USER 10001:10001
EXPOSE 8000
VOLUME ["/model"]
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status != 200)"]
ENTRYPOINT ["python", "-m", "steel_defect.deploy.serve", "host=0.0.0.0", "port=8000", "accelerator=cpu"]
CMD ["ckpt=/model/model.ckpt"]
