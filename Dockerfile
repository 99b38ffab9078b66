# One image for every rpmgw process (gateway, worker, web, simulator); the command picks the process.
FROM python:3.11-slim
RUN useradd --create-home --uid 10001 rpmgw
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY device_sim ./device_sim
COPY alerts ./alerts
COPY web ./web
COPY rpmgw ./rpmgw
RUN pip install --no-cache-dir .
USER rpmgw
ENV RPMGW_DATA_DIR=/home/rpmgw/data
ENTRYPOINT ["rpmgw"]
