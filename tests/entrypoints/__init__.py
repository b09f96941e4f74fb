"""Importable code the tests name in study specs: model factories, training functions, model classes."""
