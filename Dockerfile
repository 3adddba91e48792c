# slimp on a CUDA PyTorch base: `docker build -t slimp .` then
# `docker run --gpus all -v $PWD/data:/data slimp pretrain /data/shards --out /data/run`
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

WORKDIR /opt/slimp
COPY pyproject.toml README.md ./
COPY slimp_cli ./slimp_cli
COPY schemas ./schemas
# torch comes from the base image; pip keeps it (the project asks for a range, not a pin).
RUN pip install --no-cache-dir -e . && slimp --help > /dev/null

ENTRYPOINT ["slimp"]
CMD ["--help"]
