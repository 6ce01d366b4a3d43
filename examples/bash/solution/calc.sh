#!/usr/bin/env bash
# Lab 1 reference solution (staff only; not part of the starter).
a=$1 op=$2 b=$3
case "$op" in
    +) echo $((a + b)) ;;
    -) echo $((a - b)) ;;
    x) echo $((a * b)) ;;
    /) if [ "$b" -eq 0 ]; then echo "calc: division by zero" >&2; exit 1; fi
       echo $((a / b)) ;;
    *) echo "calc: unknown operator $op" >&2; exit 2 ;;
esac
