# The one image every node of a lorasweep cluster runs: cluster.yaml (`docker:`, Ray's launcher) and
# kubernetes/rayjob.yaml (KubeRay). Ray's own GPU image at the Ray version pyproject.toml pins, with
# this repo installed exactly as the README installs it. From the repo root:
#   docker build -t YOUR-REGISTRY/lorasweep:0.1.0 . && docker push YOUR-REGISTRY/lorasweep:0.1.0
# .dockerignore keeps the venv, runs and .git out of the build context.
FROM rayproject/ray:2.60.0-py311-gpu

COPY --chown=ray:users . /home/ray/lorasweep
WORKDIR /home/ray/lorasweep
# torch first, then the project (editable: a node that mounts a newer checkout at ~/lorasweep, as
# cluster.yaml's file_mounts do, runs that code), then DeepSpeed built against that torch: install.sh
# does all three, into the image's Python. TORCH_SPEC asks for PyPI's CUDA build explicitly: `docker
# build` sees no NVIDIA driver, and install.sh would otherwise pick the CPU build for a machine
# without one. DeepSpeed's CPU Adam (the optimizer --offload runs) is compiled here, once, instead of
# by the first trial on every fresh node (a JIT build of minutes while its GPUs wait): DS_BUILD_CPU_ADAM
# asks for it, DS_ACCELERATOR=cuda builds it for the CUDA accelerator the build cannot detect, and
# TORCH_CUDA_ARCH_LIST names the GPUs (A10G/A100/L4/H100 and their kin) since none is visible here.
# Ray's GPU image is built on nvidia/cuda's devel image, which has the compiler and CUDA headers.
RUN TORCH_SPEC=torch==2.13.0 DS_BUILD_CPU_ADAM=1 DS_ACCELERATOR=cuda TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0" \
        ./install.sh && rm -rf ~/.cache/pip
