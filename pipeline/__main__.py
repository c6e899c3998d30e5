"""`python -m pipeline`: the main job (see pipeline/job.py and conf/config.yaml)."""

from pipeline.job import main

if __name__ == "__main__":
    main()
