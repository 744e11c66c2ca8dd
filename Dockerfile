# One image for the bridge and every pool; only the command differs. Finished in the deployment issue.
FROM python:3.11-slim AS build
WORKDIR /src
COPY requirements.txt .
RUN pip install --no-cache-dir --prefix=/install -r requirements.txt
COPY pyproject.toml .
COPY etl etl
COPY workers workers
RUN pip install --no-cache-dir --prefix=/install --no-deps .

FROM python:3.11-slim
COPY --from=build /install /usr/local
COPY bin /app/bin
RUN useradd --system --uid 10001 etl
USER etl
WORKDIR /app
CMD ["python", "-m", "workers.bridge"]
