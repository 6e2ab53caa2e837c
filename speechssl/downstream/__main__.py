"""``python -m speechssl.downstream`` (and ``torchrun -m speechssl.downstream``) = ``speechssl-probe``."""

from speechssl.downstream.cli import main

main()
