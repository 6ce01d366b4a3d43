#!/usr/bin/env bash
# Lab 1: a tiny calculator.
#   bash calc.sh A OP B   prints the integer result of A OP B
# OP is one of + - x /  (x, not *, so the shell does not expand it).
# Division is integer division; dividing by zero prints an error on
# stderr and exits with status 1.
#
# TODO: multiplication and division.
a=$1 op=$2 b=$3
case "$op" in
    +) echo $((a + b)) ;;
    -) echo $((a - b)) ;;
    *) echo "calc: unknown operator $op" >&2; exit 2 ;;
esac
