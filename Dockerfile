# slimp on a CUDA PyTorch base:
#   docker build -t slimp .
#   docker run --gpus all --shm-size=8g -v "$PWD/data:/data" slimp \
#       pretrain /data/shards/pad --out /data/runs/pad
# --shm-size (or --ipc=host): DataLoader workers pass batches through shared memory, and
# Docker's default 64 MB makes them fail ("bus error"). The container runs as an unprivileged
# user (uid 1000); add `--user "$(id -u):$(id -g)"` when the mounted folder belongs to
# another uid.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

WORKDIR /opt/slimp
COPY pyproject.toml README.md LICENSE ./
COPY slimp_cli ./slimp_cli
# A regular (non-editable) install: the built-in schemas ship inside the package. torch comes
# from the base image; pip keeps it (the project asks for a range, not a pin). The tensorboard
# extra makes `--report-to tensorboard` work in the image (wandb stays optional: '.[wandb]').
RUN pip install --no-cache-dir ".[tensorboard]" && rm -rf /opt/slimp/build && slimp --version \
    && python -c "import tensorboard"

RUN useradd --create-home --uid 1000 slimp && mkdir -p /work && chown slimp /work
USER slimp
WORKDIR /work

ENTRYPOINT ["slimp"]
CMD ["--help"]
