# megatron-sgpo on an NGC PyTorch image (it ships CUDA, NCCL, Transformer Engine and apex).
# Build: docker build -t megatron-sgpo .      Run: see examples/README.md (torchrun / SLURM recipes).
FROM nvcr.io/nvidia/pytorch:25.09-py3

# Keep the container's torch, Transformer Engine and apex: every later install is constrained to them,
# so a package that wants another torch fails the build instead of silently replacing it.
RUN pip list --format=freeze | grep -iE '^(torch|transformer[-_]engine|apex|flash[-_]attn)==' > /opt/ngc-pins.txt

# SGLang serves the profiling pass and the rollouts; megatron-core trains the policy.
ARG SGLANG_VERSION=0.5.23
ARG MCORE_VERSION=0.16.1
RUN pip install --no-cache-dir -c /opt/ngc-pins.txt "sglang[srt]==${SGLANG_VERSION}" "megatron-core==${MCORE_VERSION}"

WORKDIR /opt/megatron-sgpo
COPY . .
RUN pip install --no-cache-dir -c /opt/ngc-pins.txt -e ".[tasks]"

# Sanity check at build time: TE imports, megatron-core and the package import.
RUN python -c "import transformer_engine.pytorch, megatron.core, megatron_sgpo.trainer; print('ok')"
ENTRYPOINT ["sgpo"]
