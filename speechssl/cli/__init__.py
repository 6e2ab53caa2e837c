"""Command-line front ends: argument parsing only; every verb calls a library function."""
