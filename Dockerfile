# One image for every crossfold process: API, dispatcher, Ray head and workers, MLflow server.
FROM python:3.11-slim
WORKDIR /app
# torch from PyPI: the default Linux wheel carries CUDA, which the GPU workers need.
RUN pip install --no-cache-dir "torch>=2.4,<2.15"
COPY pyproject.toml README.md ./
COPY api api
COPY services services
COPY workers workers
# mlflow[auth] (Flask-WTF): the MLflow server runs its basic-auth app (docker-compose.yml).
RUN pip install --no-cache-dir . "mlflow[auth]"
