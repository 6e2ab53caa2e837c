"""``python -m speechssl.train`` (and ``torchrun -m speechssl.train``) = ``speechssl-train``."""

from speechssl.train.cli import main

main()
